"""Runs a step graph: one scheduler loop over an executor, with checkpoints, resume and failure isolation.

The loop (after Kedro's runner) submits every step whose needs are done, longest expected
critical path first, waits for the first to finish, checkpoints it in the parent, and repeats.
A failed step skips only the steps downstream of it; everything else runs and checkpoints, so
a resume re-runs just what is missing. The same loop drives one in-process worker, a process
pool and a Dask cluster (see :mod:`bondexp.executors`). What to run and reuse is decided in
:mod:`bondexp.planning`; how steps ended is recorded in :mod:`bondexp.results`.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future, wait
from functools import partial
from pathlib import Path
from typing import Any

from bondexp import executors, planning
from bondexp.checkpoints import CheckpointStore, DurationHistory, RunLock, utc_iso
from bondexp.errors import ConfigError, GraphError
from bondexp.graph import Graph
from bondexp.handback import keep_handed_back, restore_step_files, step_files, write_step_files
from bondexp.progress import Progress
from bondexp.results import RunResult, StepOutcome, WorkerLabels
from bondexp.worker import Task

__all__ = ["run_graph"]

log = logging.getLogger("bondexp")

_TICK_S = 0.5  # how often the bar's elapsed time and ETA refresh while steps run


def run_graph(
    graph: Graph,
    *,
    run_dir: str | Path,
    workers: int = 1,
    executor: str = "local",
    shared: Mapping[str, Any] | None = None,
    data_fingerprint: str,
    resume: bool = True,
    progress: bool = True,
    executor_options: Mapping[str, Any] | None = None,
    durations_path: str | Path | None = None,
    dataset: Any = None,
) -> RunResult:
    """Run every step of ``graph`` in ``run_dir`` and checkpoint each one as it finishes.

    Parameters
    ----------
    graph : Graph
        From :func:`bondexp.graph.build_graph`.
    run_dir : path
        The run folder; gets ``checkpoints/``, ``logs/`` and ``run.lock``.
    workers : int
        Steps run at once. ``1`` runs them in this process.
    executor : {"local", "serial", "dask"}
        ``local``: in-process for one worker, else a pool of ``workers`` processes;
        ``serial``: always in-process; ``dask``: a Dask cluster.
    shared : mapping, optional
        Plain run-level values given to every step as ``ctx.shared``. They are not part of the
        fingerprint: anything that changes results belongs in a step's config or the data fingerprint.
    data_fingerprint : str
        Identifies the input data; part of every step's fingerprint.
    resume : bool
        Reuse checkpoints that verify (fingerprint and sha256); ``False`` re-runs everything.
    progress : bool
        Show the progress bar (plain lines when stderr is not a terminal).
    executor_options : mapping, optional
        ``local``: ``start_method`` (``forkserver`` or ``spawn``); ``dask``: ``address``.
    durations_path : path, optional
        JSON file of step durations shared between runs (e.g. in a cache folder); read to order
        ready steps and estimate the ETA, updated with this run's durations.
    dataset : optional
        The run's dataset (what ``dataset_for(ctx.shared)`` returns in a step). An executor without
        a shared disk (Dask) sends it to its workers once; the others' workers read the feature cache.

    Returns
    -------
    RunResult
        Per-step outcomes; ``ok`` is false if a step failed or the run was interrupted (Ctrl-C).

    Raises
    ------
    ConfigError
        On a bad argument or executor.
    RunLockedError
        When another live process uses ``run_dir``.
    GraphError
        If the scheduler finds nothing running while work remains (a bug, never a hang).
    """
    _check_arguments(graph, workers=workers, data_fingerprint=data_fingerprint, shared=shared)
    backend = executors.make_backend(executor, workers=workers, options=executor_options)
    t0 = time.perf_counter()
    run_dir = Path(run_dir).resolve()
    history = DurationHistory(durations_path)
    with RunLock(run_dir):
        store = CheckpointStore(run_dir / "checkpoints")
        store.remove_temporaries()
        fps = planning.step_fingerprints(graph, data_fingerprint)
        plan = planning.reuse_plan(graph, store, fps) if resume else {name: "resume=False" for name in graph.order}
        expected = planning.expected_durations(graph, store, history)
        run = _Scheduler(graph, run_dir=run_dir, store=store, backend=backend, fingerprints=fps,
                         expected=expected, shared=dict(shared or {}), dataset=dataset)
        result = run.run(plan, progress=progress, t0=t0, executor_name=executor)
        history.update({n: s.duration_s for n, s in result.steps.items() if s.status == "ran" and s.duration_s is not None})
    return result


def _check_arguments(graph: Any, *, workers: Any, data_fingerprint: Any, shared: Any) -> None:
    """Raise ConfigError naming the first bad argument of :func:`run_graph`."""
    if not isinstance(graph, Graph):
        raise ConfigError(f"run_graph takes a Graph from build_graph. Got {type(graph).__name__} instead.")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"The 'workers' parameter of run_graph must be an int >= 1. Got {workers!r} instead.")
    if not isinstance(data_fingerprint, str):
        raise ConfigError(
            f"The 'data_fingerprint' parameter of run_graph must be a str. Got {type(data_fingerprint).__name__} instead."
        )
    if shared is not None and not isinstance(shared, Mapping):
        raise ConfigError(f"The 'shared' parameter of run_graph must be a mapping. Got {type(shared).__name__} instead.")


class _Scheduler:
    """State of one run: steps pending, running and done, crash suspects, and the outcomes so far."""

    def __init__(self, graph: Graph, *, run_dir: Path, store: CheckpointStore, backend: Any,
                 fingerprints: Mapping[str, str], expected: Mapping[str, float | None], shared: dict,
                 dataset: Any = None):
        self.graph = graph
        self.run_dir = run_dir
        self.store = store
        self.backend = backend
        self.fps = fingerprints
        self.expected = expected
        self.priority = planning.priorities(graph, expected)
        self.position = {name: i for i, name in enumerate(graph.order)}
        self.shared = shared
        self.dataset = dataset
        self.concurrency = backend.concurrency
        self.threads = executors.threads_per_worker(self.concurrency)
        self.outcomes: dict[str, StepOutcome] = {}
        self.done: set[str] = set()
        self.pending: set[str] = set()
        self.running: dict[Future, str] = {}
        self.suspects: set[str] = set()  # steps in flight when a worker process died
        self.submitted_at: dict[str, float] = {}
        self.label = WorkerLabels()

    def run(self, plan: Mapping[str, str | None], *, progress: bool, t0: float, executor_name: str) -> RunResult:
        """Reuse what the plan allows, run the rest; return the result (interrupted on Ctrl-C).

        ``t0`` is the ``perf_counter`` time the run began (before checkpoints were verified);
        ``executor_name`` is recorded in the result.
        """
        for name, reason in plan.items():
            if reason is None:
                self._reuse(name)
            else:
                self.pending.add(name)
        interrupted, kill, started = False, True, False
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        log.info("run %s: %d steps, %d reused, %d to run on %d worker(s)", self.run_dir, len(self.graph),
                 len(self.done), len(self.pending), self.concurrency)
        with Progress(total=len(self.graph), done=len(self.done), enabled=progress) as bar:
            try:
                started = self._start() if self.pending else False
                while self.pending or self.running:
                    started = self._submit_ready(started, bar)
                    finished, _ = wait(self.running, timeout=_TICK_S, return_when=FIRST_COMPLETED)
                    bar.refresh(running=self._running_names(), eta_s=self._eta())
                    for future in finished:
                        if future in self.running:
                            started = self._collect(future, started, bar)
                kill = False
            except KeyboardInterrupt:
                interrupted = True
                log.warning("interrupted: stopping workers; finished checkpoints are kept")
                self._harvest_finished(bar)
            finally:
                if started:
                    self.backend.stop(kill=kill)
        if interrupted:
            self._settle_unfinished()
        steps = {name: self.outcomes[name] for name in self.graph.order}
        return RunResult(steps=steps, wall_s=time.perf_counter() - t0, run_dir=self.run_dir,
                         executor=executor_name, workers=self.concurrency, interrupted=interrupted)

    def _start(self) -> bool:
        self.backend.start()
        return True

    def _submit_ready(self, started: bool, bar: Progress) -> bool:
        """Submit ready steps (needs all done) up to the worker limit; raise if nothing can ever run.

        Returns whether the backend is started (a broken pool is replaced, or left stopped when no work remains).
        """
        ready = sorted((n for n in self.pending if set(self.graph[n].needs) <= self.done),
                       key=lambda n: (-self.priority[n], self.position[n]))
        ready = planning.submittable(ready, suspects=self.suspects, running=self.running.values())
        for name in ready[: max(0, self.concurrency - len(self.running))]:
            step = self.graph[name]
            task = Task(name=name, target=step.target, config=step.config, needs=step.needs,
                        run_dir=str(self.run_dir), workers=self.concurrency, threads=self.threads,
                        shared=self.shared, files=step_files(self.run_dir, name) if self.backend.remote else {})
            self.pending.discard(name)
            self.submitted_at[name] = time.perf_counter()
            log.info("start %s", name)  # before submit: the in-process executor runs the step inside it
            bar.started(name, running=[*self._running_names(), name], eta_s=self._eta())
            try:
                self.running[self.backend.submit(task, load_input=partial(self.store.load, pipeline=True), dataset=self.dataset)] = name
            except BrokenExecutor as exc:  # the pool broke before its running futures said so
                self.pending.add(name)
                return self._pool_broke(list(self.running.values()), exc, bar)
        if not self.running and self.pending:
            ready_now = sorted(n for n in self.pending if set(self.graph[n].needs) <= self.done)
            raise GraphError(
                "The scheduler is stuck: nothing is running but steps remain. "
                f"todo={sorted(self.pending)} done={sorted(self.done)} ready={ready_now}"
            )
        return started

    def _collect(self, future: Future, started: bool, bar: Progress) -> bool:
        """Record a finished future: checkpoint it, or fail it and skip what needs it."""
        name = self.running.pop(future)
        exc = future.exception()
        if isinstance(exc, BrokenExecutor):
            return self._pool_broke([name, *self.running.values()], exc, bar)
        if exc is not None:
            self._fail(name, "".join(traceback.format_exception(exc)), bar)
            return started
        report = future.result()
        try:
            keep_handed_back(self.run_dir, name, report)
        except Exception:
            self._fail(name, "the step ran but its log or files could not be written:\n" + traceback.format_exc(),
                       bar, report=report)
            return started
        if report["error"] is not None:
            self._fail(name, report["error"], bar, report=report)
            return started
        self._record_ran(name, report, bar)
        return started

    def _pool_broke(self, lost: list[str], exc: BaseException, bar: Progress) -> bool:
        """A worker process died and took the pool with it: fail or re-queue ``lost``, start a new pool.

        A lone lost step is the culprit. Several go back to the queue and run again one at a
        time, so only the culprit fails.
        """
        self.running.clear()
        self.backend.stop(kill=True)
        if len(lost) == 1:
            self._fail(lost[0], f"its worker process died ({exc!r}); a crash in native code or the "
                                f"out-of-memory killer are the usual causes", bar)
        elif lost:
            log.warning("a worker process died while %s were running; running them again one at a time",
                        ", ".join(lost))
            self.suspects.update(lost)
            self.pending.update(lost)
        return self._start() if self.pending else False

    def _record_ran(self, name: str, report: Mapping[str, Any], bar: Progress) -> None:
        """Checkpoint a step that ran (artifact and manifest) and record it as done."""
        step = self.graph[name]
        worker = self.label(report["worker"])
        manifest = {
            "target": step.target,
            "fingerprint": self.fps[name],
            "needs": {n: self.fps[n] for n in step.needs},
            "duration_s": round(report["duration_s"], 4),
            "started": utc_iso(report["started"]),
            "ended": utc_iso(report["ended"]),
            "worker": worker,
            "peak_rss_mb": report.get("peak_rss_mb"),
            "metrics": report["metrics"],
        }
        status = "ran" if report.get("skipped") is None else "skipped"
        if status == "skipped":  # checkpointed too: a resume reuses the skip, and needs get None
            manifest["skipped"] = report["skipped"]
        files = report.get("output_files") or {}
        try:
            write_step_files(self.run_dir, name, files)  # the step's report files, kept with its checkpoint too
            self.store.save(name, report["artifact"], manifest, files=files)
        except Exception:
            self._fail(name, "the step ran but its files or checkpoint could not be written:\n" + traceback.format_exc(),
                       bar, report=report)
            return
        self.done.add(name)
        self.outcomes[name] = StepOutcome.from_report(name, step.group, self.fps[name], report, status=status,
                                                      worker=worker)
        self.outcomes[name].error = report.get("skipped")  # a step that skipped itself says why
        log.info("%s %s in %.2f s on %s", status, name, report["duration_s"], worker)
        bar.finished(name, status=status, duration_s=report["duration_s"], running=self._running_names(),
                     eta_s=self._eta())

    def _fail(self, name: str, error: str, bar: Progress, *, report: Mapping[str, Any] | None = None) -> None:
        """Record ``name`` as failed and skip every pending step downstream of it."""
        report = report or {}
        worker = self.label(report["worker"]) if report else None
        self.outcomes[name] = StepOutcome.from_report(name, self.graph[name].group, self.fps[name], report,
                                                      status="failed", worker=worker, error=error)
        log.error("failed %s: %s (traceback in logs/%s.log and results.json)",
                  name, error.strip().splitlines()[-1], name)
        bar.finished(name, status="failed", duration_s=report.get("duration_s"), running=self._running_names(),
                     eta_s=self._eta())
        for downstream in sorted(self.graph.downstream([name]) & self.pending, key=self.position.__getitem__):
            direct = name in self.graph[downstream].needs
            reason = f"needs {name!r} which failed" if direct else f"upstream step {name!r} failed"
            self.pending.discard(downstream)
            self._skip(downstream, reason)
            bar.finished(downstream, status="skipped", duration_s=None, running=self._running_names(),
                         eta_s=self._eta())

    def _skip(self, name: str, reason: str) -> None:
        self.outcomes[name] = StepOutcome(name=name, group=self.graph[name].group, status="skipped",
                                          fingerprint=self.fps[name], error=reason)
        log.warning("skipped %s: %s", name, reason)

    def _reuse(self, name: str, *, status: str = "reused") -> None:
        """Record a step from its verified checkpoint's manifest; write back its report files if missing."""
        restore_step_files(self.run_dir, name, self.store)
        self.done.add(name)
        self.outcomes[name] = StepOutcome.from_manifest(name, self.graph[name].group, self.fps[name],
                                                        self.store.manifest(name) or {}, status=status)

    def _harvest_finished(self, bar: Progress) -> None:
        """After Ctrl-C, keep the results of steps that finished but were not yet collected."""
        for future in [f for f in self.running if f.done() and not f.cancelled()]:
            if future.exception() is None and future.result()["error"] is None:
                self._collect(future, True, bar)

    def _settle_unfinished(self) -> None:
        """After Ctrl-C, give every step without an outcome one: ran if its checkpoint is on disk, else skipped."""
        in_flight = self.pending | set(self.running.values())
        for name in self.graph.order:
            if name in self.outcomes:
                continue
            if name not in in_flight and self.store.verify(name, self.fps[name]) is None:
                self._reuse(name, status="ran")  # Ctrl-C came after its checkpoint was written
            else:
                self._skip(name, "the run was interrupted before this step finished")

    def _running_names(self) -> list[str]:
        return sorted(self.running.values())

    def _eta(self) -> float | None:
        now = time.perf_counter()
        return planning.eta_s(self.graph, self.expected, pending=self.pending, concurrency=self.concurrency,
                              running_for={n: now - self.submitted_at[n] for n in self.running.values()})

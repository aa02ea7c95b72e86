"""Runs a step graph: one scheduler loop over an executor, with checkpoints, resume and failure isolation.

The loop (after Kedro's runner) submits every step whose needs are done, longest expected
critical path first, waits for the first to finish, checkpoints it in the parent, and repeats.
A failed step skips only the steps downstream of it; everything else runs and checkpoints, so
a resume re-runs just what is missing. The same loop drives one in-process worker, a process
pool and a Dask cluster (see :mod:`bondexp.executors`). What to run and reuse is decided in
:mod:`bondexp.planning`; how steps ended is recorded in :mod:`bondexp.results`.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future, wait
from functools import partial
from pathlib import Path
from typing import Any

from bondexp import executors, planning
from bondexp.checkpoints import CheckpointStore, DurationHistory, RunLock
from bondexp.errors import BondexpError, ConfigError, GraphError, InputsLost
from bondexp.graph import Graph
from bondexp.handback import keep_handed_back, restore_step_files, step_files, write_step_files
from bondexp.progress import Progress
from bondexp.results import INTERRUPTED, RunResult, StepOutcome, WorkerLabels
from bondexp.script import hold_ctrl_c, raise_lost_ctrl_c, release_ctrl_c
from bondexp.worker import Task

__all__ = ["run_graph"]

log = logging.getLogger("bondexp")

_TICK_S = 0.5  # how often the bar's elapsed time and ETA refresh while steps run
_INPUTS_LOST_RETRIES = 3  # how many times a step whose inputs a cluster forgot is submitted again


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
    progress_label: str | None = None,
    executor_options: Mapping[str, Any] | None = None,
    durations_path: str | Path | None = None,
    dataset: Any = None,
    check: Callable[[list[str]], BondexpError | None] | None = None,
    hold_ctrl_c_after: bool = False,
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
    progress_label : str, optional
        Plain lines starting with this label instead of a bar, for a run sharing its terminal with
        others (see :class:`~bondexp.progress.Progress`).
    executor_options : mapping, optional
        ``local``: ``start_method`` (``forkserver`` or ``spawn``); ``dask``: ``address``.
    durations_path : path, optional
        JSON file of step durations shared between runs (e.g. in a cache folder); read to order
        ready steps and estimate the ETA, updated with this run's durations.
    dataset : optional
        The run's dataset (what ``dataset_for(ctx.shared)`` returns in a step). An executor without
        a shared disk (Dask) sends it to its workers once; the others' workers read the feature cache.
    check : callable, optional
        A picklable check of the config that needs the step libraries (:func:`bondexp.preflight.config_error`
        with its argument bound), run where the steps run before the first one is submitted, when any
        step is to run; it is given the names of the steps that will run (a sorted list). The error it
        returns (returned, not raised: a worker would log a raised one) is raised here before any step
        begins (no ``logs/``).
    hold_ctrl_c_after : bool
        Once every step has ended, a Ctrl-C is held (:func:`bondexp.script.hold_ctrl_c`) while the pool
        stops; with this the hold lasts past the return, and the caller, which writes the run's outputs,
        ends it with :func:`bondexp.script.release_ctrl_c`. Else it ends here, folded into the result.

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
        run = _Scheduler(
            graph,
            store,
            backend,
            run_dir=run_dir,
            fingerprints=fps,
            expected=expected,
            shared=dict(shared or {}),
            dataset=dataset,
            check=check,
        )
        try:
            result = run.run(plan, progress=progress, progress_label=progress_label, t0=t0, executor_name=executor)
            ran = {n: s.duration_s for n, s in result.steps.items() if s.status == "ran" and s.duration_s is not None}
            history.update({planning.history_key(graph[n]): seconds for n, seconds in ran.items()})
        except BaseException:
            release_ctrl_c()
            raise
    if not hold_ctrl_c_after:
        result.ctrl_c_after_steps |= release_ctrl_c()
    return result


def _check_arguments(graph: Any, *, workers: Any, data_fingerprint: Any, shared: Any) -> None:
    """Raise ConfigError naming the first bad argument of :func:`run_graph`."""
    if not isinstance(graph, Graph):
        raise ConfigError(f"run_graph takes a Graph from build_graph. Got {type(graph).__name__} instead.")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"The 'workers' parameter of run_graph must be an int >= 1. Got {workers!r} instead.")
    if not isinstance(data_fingerprint, str):
        raise ConfigError(f"The 'data_fingerprint' parameter of run_graph must be a str. Got {type(data_fingerprint).__name__} instead.")
    if shared is not None and not isinstance(shared, Mapping):
        raise ConfigError(f"The 'shared' parameter of run_graph must be a mapping. Got {type(shared).__name__} instead.")


class _Scheduler:
    """One run: steps pending, running and done, their outcomes, and the loop that moves them along."""

    def __init__(
        self,
        graph: Graph,
        store: CheckpointStore,
        backend: Any,
        *,
        run_dir: Path,
        fingerprints: Mapping[str, str],
        expected: Mapping[str, float | None],
        shared: dict,
        dataset: Any = None,
        check: Callable[[list[str]], BondexpError | None] | None = None,
    ):
        self.graph = graph
        self.check = check
        self.run_dir = run_dir
        self.store = store
        self.backend = backend
        self.fps = fingerprints
        self.code = planning.step_code(graph)  # recorded in each manifest, for predict to compare
        self.shared = shared
        self.dataset = dataset
        self.threads = executors.threads_per_worker(backend.concurrency)
        self.best_first = planning.ready_order(graph, expected)
        self.eta = planning.Eta(graph, expected, concurrency=backend.concurrency)
        self.suspects = planning.CrashSuspects()
        self.label = WorkerLabels()
        self.outcomes: dict[str, StepOutcome] = {}
        self.done: set[str] = set()
        self.pending: set[str] = set()
        self.running: dict[Future, str] = {}
        self.inputs_lost: dict[str, int] = {}  # step name -> times a cluster forgot its inputs
        self.started = False  # whether the backend is started (it starts at the first submit)
        self.bar = Progress(total=0, enabled=False)  # shows nothing; run() puts the run's bar here

    def run(
        self, plan: Mapping[str, str | None], *, progress: bool, t0: float, executor_name: str, progress_label: str | None = None
    ) -> RunResult:
        """Reuse what the plan allows, run the rest; return the result (interrupted on Ctrl-C).

        ``t0`` is the ``perf_counter`` time the run began (before checkpoints were verified);
        ``executor_name`` is recorded in the result.
        """
        for name, reason in plan.items():
            if reason is None:
                self._reuse(name)
            else:
                self.pending.add(name)
        raise_lost_ctrl_c()  # before the check starts any worker
        if self.pending and self.check is not None:
            self._check_config()
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        log.info(
            "run %s: %d steps, %d reused, %d to run on %d worker(s)",
            self.run_dir,
            len(self.graph),
            len(self.done),
            len(self.pending),
            self.backend.concurrency,
        )
        interrupted, after_steps = False, False
        with Progress(total=len(self.graph), done=len(self.done), enabled=progress, label=progress_label) as self.bar:
            try:
                self._loop()
            except KeyboardInterrupt:
                if all(name in self.outcomes for name in self.graph.order):
                    after_steps = True  # it came once the last step had ended: nothing was left to interrupt
                else:
                    interrupted = True
                    self.bar.interrupted()
                    log.warning("interrupted: stopping workers; checkpoints are kept")  # 97 columns with the log prefix
                    self._harvest_finished()
                    self._stop(kill=True)
            except BaseException:
                self._stop(kill=True)
                raise
            if not interrupted:
                hold_ctrl_c()  # every step has ended: what is left is the outputs (released by the caller of run_graph)
                self._stop(kill=False)
        if interrupted:
            self._settle_unfinished()
        return RunResult(
            steps={name: self.outcomes[name] for name in self.graph.order},
            wall_s=time.perf_counter() - t0,
            run_dir=self.run_dir,
            executor=executor_name,
            workers=self.backend.concurrency,
            interrupted=interrupted,
            ctrl_c_after_steps=after_steps,
        )

    def _check_config(self) -> None:
        """Run the config check where the steps run (starting the backend); on any error stop it and raise."""
        assert self.check is not None  # run() calls this only with a check
        self.backend.start()
        self.started = True
        try:
            error = self.backend.call(self.check, sorted(self.pending)).result()
            if error is not None:
                raise error
        except BaseException:  # a ConfigError, or Ctrl-C while it ran: no step has begun
            self._stop(kill=True)
            raise

    def _loop(self) -> None:
        """Kedro's runner loop: submit every ready step, wait for the first to finish, collect it, repeat."""
        while True:
            raise_lost_ctrl_c()
            self._submit(self._ready())
            if not self.running:
                if self.pending:
                    raise GraphError(
                        "The scheduler is stuck: nothing is running but steps remain. "
                        f"todo={sorted(self.pending)} done={sorted(self.done)} ready={sorted(self._ready())}"
                    )
                return
            finished, _ = wait(self.running, timeout=_TICK_S, return_when=FIRST_COMPLETED)
            self.bar.refresh(**self._status())
            for future in finished:
                if future in self.running:  # not dropped by a broken pool
                    self._collect(future)

    def _ready(self) -> list[str]:
        """Steps whose needs are done and that may start now (see CrashSuspects), best first, up to the free workers."""
        ready = sorted((n for n in self.pending if set(self.graph[n].needs) <= self.done), key=self.best_first)
        free = max(0, self.backend.concurrency - len(self.running))
        return self.suspects.submittable(ready, running=self.running.values())[:free]

    def _submit(self, names: list[str]) -> None:
        """Hand ``names`` to the backend, starting it on first use; a pool found broken is replaced and submitting goes on."""
        for name in names:
            step = self.graph[name]
            task = Task(
                name=name,
                target=step.target,
                config=step.config,
                needs=step.needs,
                run_dir=str(self.run_dir),
                workers=self.backend.concurrency,
                threads=self.threads,
                shared=self.shared,
                files=step_files(self.run_dir, name) if self.backend.remote else {},
            )
            if not self.started:
                self.backend.start()
                self.started = True
            self.pending.discard(name)
            self.eta.submitted(name)
            log.info("start %s", name)  # before submit: the in-process executor runs the step inside it
            self.bar.started(name, **self._status(also_running=name))
            try:
                # an in-process step runs inside submit: a thread moves the bar's clock meanwhile (a pool's submit returns at once)
                status = partial(self._status, also_running=name)
                with self.bar.ticking(status, every_s=_TICK_S) if self.backend.in_process else contextlib.nullcontext():
                    future = self.backend.submit(task, load_input=partial(self.store.load, pipeline=True), dataset=self.dataset)
                self.running[future] = name
            except BrokenExecutor as exc:  # the pool broke before its running futures said so
                self.pending.add(name)
                self._pool_broke(list(self.running.values()), exc)
                self._submit(self._ready())
                return

    def _collect(self, future: Future) -> None:
        """Record a finished future: checkpoint it, or fail it and skip what needs it."""
        name = self.running.pop(future)
        exc = future.exception()
        if isinstance(exc, BrokenExecutor):
            self._pool_broke([name, *self.running.values()], exc)
        elif isinstance(exc, InputsLost) and self.inputs_lost.get(name, 0) < _INPUTS_LOST_RETRIES:
            self.inputs_lost[name] = self.inputs_lost.get(name, 0) + 1
            log.warning("the cluster lost the inputs of %s (%s); submitting it again", name, exc)
            self.pending.add(name)
        elif exc is not None:
            self._fail(name, "".join(traceback.format_exception(exc)))
        else:
            report = future.result()
            try:
                keep_handed_back(self.run_dir, name, report)
            except Exception:
                self._fail(name, "the step ran but its log or files could not be written:\n" + traceback.format_exc(), report=report)
                return
            if report["error"] is not None:
                self._fail(name, report["error"], report=report)
            else:
                self._record_ran(name, report)

    def _pool_broke(self, lost: list[str], exc: BaseException) -> None:
        """A worker process died and took the pool with it: fail the culprit or re-queue the suspects.

        A new pool starts at the next submit.
        """
        self.running.clear()
        self._stop(kill=True)
        culprit = self.suspects.culprit(lost)
        if culprit is not None:
            self._fail(
                culprit, f"its worker process died ({exc!r}); a crash in native code or the out-of-memory killer are the usual causes"
            )
        elif lost:
            log.warning("a worker process died while %s were running; running them again one at a time", ", ".join(lost))
            self.pending.update(lost)

    def _record_ran(self, name: str, report: Mapping[str, Any]) -> None:
        """Checkpoint a step that ran (artifact and manifest) and record it as done."""
        step = self.graph[name]
        outcome = StepOutcome.ran(name, step.group, self.fps[name], report, worker=self.label(report["worker"]))
        files = report.get("output_files") or {}
        try:
            write_step_files(self.run_dir, name, files)  # the step's report files, kept with its checkpoint too
            manifest = outcome.manifest(step.target, {n: self.fps[n] for n in step.needs})
            if self.code[name]:
                manifest["code"] = self.code[name]
            self.store.save(name, report["artifact"], manifest, files=files)
        except Exception:
            self._fail(name, "the step ran but its files or checkpoint could not be written:\n" + traceback.format_exc(), report=report)
            return
        self.done.add(name)
        log.info("%s %s in %.2f s on %s", outcome.status, name, report["duration_s"], outcome.worker)
        for warning in outcome.warnings:  # printed here, above the bar: a worker's own output would tear it
            log.warning("%s: %s", name, warning)
        self._settle(outcome)

    def _fail(self, name: str, error: str, *, report: Mapping[str, Any] | None = None) -> None:
        """Record ``name`` as failed and skip every pending step downstream of it."""
        worker = self.label(report["worker"]) if report else None
        log.error("failed %s: %s (traceback in logs/%s.log and results.json)", name, error.strip().splitlines()[-1], name)
        self._settle(StepOutcome.failed(name, self.graph[name].group, self.fps[name], error, report or {}, worker=worker))
        blocked = self.graph.downstream([name]) & self.pending
        for downstream in [n for n in self.graph.order if n in blocked]:
            direct = name in self.graph[downstream].needs
            self.pending.discard(downstream)
            self._settle(self._skip(downstream, f"needs {name!r} which failed" if direct else f"upstream step {name!r} failed"))

    def _skip(self, name: str, reason: str, *, level: int = logging.WARNING) -> StepOutcome:
        log.log(level, "skipped %s: %s", name, reason)
        self.outcomes[name] = StepOutcome(
            name=name, group=self.graph[name].group, status="skipped", fingerprint=self.fps[name], error=reason
        )
        return self.outcomes[name]

    def _settle(self, outcome: StepOutcome) -> None:
        """Record how a step ended and move the bar on."""
        self.outcomes[outcome.name] = outcome
        self.bar.finished(outcome.name, status=outcome.status, duration_s=outcome.duration_s, **self._status())

    def _reuse(self, name: str, *, status: str = "reused") -> None:
        """Record a step from its verified checkpoint's manifest; write back its report files if missing."""
        restore_step_files(self.run_dir, name, self.store)
        self.done.add(name)
        outcome = StepOutcome.from_manifest(name, self.graph[name].group, self.fps[name], self.store.manifest(name) or {}, status=status)
        for warning in outcome.warnings:  # what the attempt that ran it said still holds for its result
            log.warning("%s%s: %s", name, " (reused)" if status == "reused" else "", warning)
        self.outcomes[name] = outcome

    def _harvest_finished(self) -> None:
        """After Ctrl-C, keep the results of steps that finished but were not yet collected."""
        for future in [f for f in self.running if f.done() and not f.cancelled()]:
            if future.exception() is None and future.result()["error"] is None:
                self._collect(future)

    def _settle_unfinished(self) -> None:
        """After Ctrl-C, give every step without an outcome one: ran if its checkpoint is on disk, else skipped."""
        in_flight = self.pending | set(self.running.values())
        for name in self.graph.order:
            if name in self.outcomes:
                continue
            if name not in in_flight and self.store.verify(name, self.fps[name]) is None:
                self._reuse(name, status="ran")  # Ctrl-C came after its checkpoint was written
            else:
                self._skip(name, INTERRUPTED, level=logging.INFO)  # the interruption was warned about once

    def _stop(self, *, kill: bool) -> None:
        if self.started:
            self.backend.stop(kill=kill)
            self.started = False

    def _status(self, also_running: str | None = None) -> dict[str, Any]:
        """What the bar shows beside the count: the steps running now and the ETA."""
        running = sorted([*self.running.values(), *([also_running] if also_running else [])])
        return {"running": running, "eta_s": self.eta(pending=self.pending, running=running)}

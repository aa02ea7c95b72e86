"""Runs a step graph: one scheduler loop over an executor, with checkpoints, resume and failure isolation.

The loop (after Kedro's runner) submits every step whose needs are done, longest expected
critical path first, waits for the first to finish, checkpoints it in the parent, and repeats.
A failed step skips only the steps downstream of it; everything else runs and checkpoints, so
a resume re-runs just what is missing. The same loop drives one in-process worker, a process
pool and a Dask cluster (see :mod:`bondexp.executors`).
"""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bondexp import executors
from bondexp.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from bondexp.checkpoints import (
    CheckpointStore,
    DurationHistory,
    RunLock,
    fingerprint,
    utc_iso,
)
from bondexp.errors import ConfigError, GraphError
from bondexp.graph import Graph
from bondexp.progress import Progress
from bondexp.worker import StepContext, Task

__all__ = ["RunResult", "StepContext", "StepOutcome", "dry_run_plan", "run_graph", "step_fingerprints"]

log = logging.getLogger("bondexp")

_TICK_S = 0.5  # how often the bar's elapsed time and ETA refresh while steps run


# ----------------------------------------------------------------------------- results


@dataclass
class StepOutcome:
    """How one step ended in this run.

    ``status`` is ``ran``, ``reused``, ``failed`` or ``skipped``; ``error`` is the traceback of a
    failed step or the reason a step was skipped (by itself, raising StepSkipped, or because a
    step it needs failed). ``started``/``ended`` are POSIX seconds measured in the worker (``None``
    for reused and skipped steps); ``duration_s`` and ``peak_rss_mb`` (the step process's peak
    resident memory, MiB) of a reused step are the ones recorded when its checkpoint was made.
    """

    name: str
    group: str
    status: str
    fingerprint: str
    duration_s: float | None = None
    worker: str | None = None
    started: float | None = None
    ended: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    peak_rss_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "group": self.group,
            "duration_s": None if self.duration_s is None else round(self.duration_s, 4),
            "peak_rss_mb": self.peak_rss_mb,
            "worker": self.worker,
            "started": utc_iso(self.started),
            "ended": utc_iso(self.ended),
            "metrics": self.metrics,
            # A step whose metrics say reproducible=false (a time cap bound) may differ on a re-run.
            "reproducible": self.metrics.get("reproducible", True) is not False,
            "error": self.error,
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True)
class _FilesIndex:
    """``logs/<step>.files.json``: the files (relative paths) a remote step handed back so far."""

    path: Path
    names: list[str]


@dataclass
class RunResult:
    """Outcome of :func:`run_graph`: one :class:`StepOutcome` per step, in graph order.

    ``interrupted`` is true after Ctrl-C; finished checkpoints are kept and a resume continues.
    """

    steps: dict[str, StepOutcome]
    wall_s: float
    run_dir: Path
    executor: str = "local"
    workers: int = 1
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        """No step failed and the run was not interrupted (a step may have skipped itself: nothing to do)."""
        return not self.interrupted and not self.failed

    @property
    def failed(self) -> list[str]:
        """Names of the steps that raised."""
        return [name for name, s in self.steps.items() if s.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` form: ``{"steps": {name: {status, duration_s, peak_rss_mb, worker, metrics, ...}}, "wall_s", "ok"}``."""
        return {
            "steps": {name: outcome.to_dict() for name, outcome in self.steps.items()},
            "wall_s": round(self.wall_s, 4),
            "ok": self.ok,
            "interrupted": self.interrupted,
            "executor": self.executor,
            "workers": self.workers,
        }

    def write(self, run_dir: Path | None = None) -> dict[str, Path | None]:
        """Write ``results.json`` and ``plots/timeline.png`` into ``run_dir`` (default: the run's folder).

        Returns
        -------
        dict
            ``{"results": path, "timeline": path or None}``.
        """
        run_dir = Path(run_dir) if run_dir is not None else self.run_dir
        return {
            "results": self.write_json(run_dir / "results.json"),
            "timeline": self.plot_timeline(run_dir / "plots" / "timeline.png"),
        }

    def write_json(self, path: Path | None = None) -> Path:
        """Write :meth:`to_dict` atomically to ``path`` (default ``<run_dir>/results.json``); return the path."""
        path = Path(path) if path is not None else self.run_dir / "results.json"
        atomic_write_json(path, self.to_dict())
        return path

    def plot_timeline(self, path: Path | None = None) -> Path | None:
        """Draw the steps run in this run per worker over time (default ``<run_dir>/plots/timeline.png``).

        Returns
        -------
        Path or None
            The PNG written, or ``None`` when no step ran (everything reused).
        """
        path = Path(path) if path is not None else self.run_dir / "plots" / "timeline.png"
        from bondexp.plots import timeline_png  # numpy and matplotlib only when a timeline is drawn

        png = timeline_png(self.steps.values())
        return None if png is None else atomic_write_bytes(path, png)

    def summary_table(self, *, key_metrics: Sequence[str] = ()) -> str:
        """A plain-text table: step, group, status, duration, worker and one key metric per step.

        The key metric is the first of ``key_metrics`` the step reports, else its first metric.
        Failed and skipped steps get their reason (a traceback's last line) under the table.
        """
        header = ("step", "group", "status", "time", "worker", "key metric")
        rows = [header]
        for s in self.steps.values():
            key = next((k for k in key_metrics if k in s.metrics), next(iter(s.metrics), None))
            metric = "" if key is None else f"{key}={_fmt_metric(s.metrics[key])}"
            took = "" if s.duration_s is None else f"{s.duration_s:.2f} s"
            rows.append((s.name, s.group, s.status, took, s.worker or "", metric))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        state = "interrupted" if self.interrupted else ("ok" if self.ok else "FAILED")
        lines.append(f"wall {self.wall_s:.2f} s, {state}")
        for s in self.steps.values():
            if s.status in ("failed", "skipped") and s.error:
                lines.append(f"{s.status} {s.name}: {s.error.strip().splitlines()[-1]}")
        return "\n".join(lines)


def _fmt_metric(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------- planning


def step_fingerprints(graph: Graph, data_fingerprint: str) -> dict[str, str]:
    """Fingerprint of every step, from its target, config, its needs' fingerprints and the data's."""
    fps: dict[str, str] = {}
    for step in graph:
        fps[step.name] = fingerprint(
            target=step.target, config=step.config, inputs={n: fps[n] for n in step.needs}, data=data_fingerprint
        )
    return fps


def _reuse_plan(graph: Graph, store: CheckpointStore, fps: Mapping[str, str]) -> dict[str, str | None]:
    """For each step, ``None`` if its checkpoint can be reused, else why it must run.

    A step whose need runs again runs again too, even if its own checkpoint verifies.
    """
    plan: dict[str, str | None] = {}
    for step in graph:
        reason = store.verify(step.name, fps[step.name])
        rerun_needs = [n for n in step.needs if plan[n] is not None]
        if reason is None and rerun_needs:
            reason = f"needs {', '.join(rerun_needs)}, which will run"
        plan[step.name] = reason
    return plan


def _expected_durations(graph: Graph, store: CheckpointStore, history: DurationHistory) -> dict[str, float | None]:
    """Expected seconds per step: this folder's manifests first, then the durations history."""
    known = history.read()
    expected: dict[str, float | None] = {}
    for name in graph.order:
        manifest = store.manifest(name)
        duration = manifest.get("duration_s") if manifest else None
        expected[name] = float(duration) if isinstance(duration, (int, float)) else known.get(name)
    return expected


def _priorities(graph: Graph, expected: Mapping[str, float | None]) -> dict[str, float]:
    """Longest expected path from each step to the end of the graph (its own time included).

    Ready steps are submitted highest first: longest-expected-first for independent steps, and
    steps that head long chains go before short leaves. Unknown durations count as the mean known.
    """
    known = [d for d in expected.values() if d is not None]
    fallback = sum(known) / len(known) if known else 1.0
    rank: dict[str, float] = {}
    for name in reversed(graph.order):
        tail = max((rank[d] for d in graph.dependents(name)), default=0.0)
        rank[name] = (expected[name] if expected[name] is not None else fallback) + tail
    return rank


def dry_run_plan(
    graph: Graph,
    *,
    run_dir: str | Path,
    shared: Mapping[str, Any] | None = None,
    data_fingerprint: str,
    durations_path: str | Path | None = None,
) -> str:
    """Describe what :func:`run_graph` would do, without doing any of it.

    Lists each group's steps with their needs, whether a resume would reuse the checkpoint
    (and why not), and the expected duration where an earlier run recorded one. Nothing is
    created, locked or run; checkpoints are only read to verify them.

    Returns
    -------
    str
        The plan as text.
    """
    run_dir = Path(run_dir)
    store = CheckpointStore(run_dir / "checkpoints")
    plan = _reuse_plan(graph, store, step_fingerprints(graph, data_fingerprint))
    expected = _expected_durations(graph, store, DurationHistory(durations_path))
    n_reuse = sum(reason is None for reason in plan.values())
    work = [expected[n] for n, reason in plan.items() if reason is not None]
    known_work = sum(d for d in work if d is not None)
    lines = [
        f"Plan for {run_dir}: {len(graph)} steps, {n_reuse} reusable, {len(graph) - n_reuse} to run"
        + (f" (~{known_work:.1f} s of known work)" if known_work else "")
    ]
    if shared:
        lines.append("shared with every step: " + ", ".join(f"{k}={v!r}" for k, v in shared.items()))
    width = max(len(n) for n in graph.order)
    for group, names in graph.groups.items():
        lines.append(f"[{group}]")
        for name in names:
            step = graph[name]
            needs = ", ".join(step.needs) or "-"
            action = "reuse checkpoint" if plan[name] is None else f"run: {plan[name]}"
            took = "" if expected[name] is None else f"  ~{expected[name]:.2f} s"
            lines.append(f"  {name.ljust(width)}  needs {needs}; {action}{took}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- scheduling


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
    backend = executors.make_backend(executor, workers=workers, options=executor_options)
    t0 = time.perf_counter()
    run_dir = Path(run_dir).resolve()
    history = DurationHistory(durations_path)
    with RunLock(run_dir):
        store = CheckpointStore(run_dir / "checkpoints")
        store.remove_temporaries()
        fps = step_fingerprints(graph, data_fingerprint)
        plan = _reuse_plan(graph, store, fps) if resume else {name: "resume=False" for name in graph.order}
        expected = _expected_durations(graph, store, history)
        run = _Scheduler(graph, run_dir=run_dir, store=store, backend=backend, fingerprints=fps,
                         expected=expected, shared=dict(shared or {}), dataset=dataset)
        result = run.run(plan, progress=progress, t0=t0, executor_name=executor)
        history.update({n: s.duration_s for n, s in result.steps.items() if s.status == "ran"})
    return result


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
        self.priority = _priorities(graph, expected)
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
        self._labels: dict[str, str] = {}

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
        interrupted, kill = False, True
        started = False
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
            in_flight = self.pending | set(self.running.values())
            for name in self.graph.order:
                if name in self.outcomes:
                    continue
                if name not in in_flight and self.store.verify(name, self.fps[name]) is None:
                    self._reuse(name, status="ran")  # Ctrl-C came after its checkpoint was written
                else:
                    self._skip(name, "the run was interrupted before this step finished")
        steps = {name: self.outcomes[name] for name in self.graph.order}
        return RunResult(steps=steps, wall_s=time.perf_counter() - t0, run_dir=self.run_dir,
                         executor=executor_name, workers=self.concurrency, interrupted=interrupted)

    # -- the loop's parts

    def _start(self) -> bool:
        self.backend.start()
        return True

    def _submit_ready(self, started: bool, bar: Progress) -> bool:
        """Submit ready steps (needs all done) up to the worker limit; raise if nothing can ever run.

        Returns whether the backend is started (a broken pool is replaced, or left stopped when no work remains).
        """
        ready = sorted((n for n in self.pending if set(self.graph[n].needs) <= self.done),
                       key=lambda n: (-self.priority[n], self.position[n]))
        suspects = [n for n in ready if n in self.suspects]
        if suspects or self.suspects & set(self.running.values()):
            ready = [] if self.running else suspects[:1]  # a suspect of a worker crash runs alone
        for name in ready[: max(0, self.concurrency - len(self.running))]:
            step = self.graph[name]
            task = Task(name=name, target=step.target, config=step.config, needs=step.needs,
                         run_dir=str(self.run_dir), workers=self.concurrency, threads=self.threads,
                         shared=self.shared, files=self._step_files(name) if self.backend.remote else {})
            self.pending.discard(name)
            self.submitted_at[name] = time.perf_counter()
            log.info("start %s", name)  # before submit: the in-process executor runs the step inside it
            bar.started(name, running=[*self._running_names(), name], eta_s=self._eta())
            try:
                self.running[self.backend.submit(task, load_input=self.store.load, dataset=self.dataset)] = name
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
            self._keep_handed_back(name, report)
        except Exception:
            self._fail(name, "the step ran but its log or files could not be written:\n" + traceback.format_exc(),
                       bar, report=report)
            return started
        if report["error"] is not None:
            self._fail(name, report["error"], bar, report=report)
            return started
        self._finish(name, report, bar)
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

    def _finish(self, name: str, report: Mapping[str, Any], bar: Progress) -> None:
        step = self.graph[name]
        worker = self._label(report["worker"])
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
        try:
            self.store.save(name, report["artifact"], manifest)
        except Exception:
            self._fail(name, "the step ran but its checkpoint could not be written:\n" + traceback.format_exc(),
                       bar, report=report)
            return
        self.done.add(name)
        self.outcomes[name] = StepOutcome(
            name=name, group=step.group, status=status, fingerprint=self.fps[name],
            duration_s=report["duration_s"], worker=worker, started=report["started"],
            ended=report["ended"], metrics=dict(report["metrics"]), peak_rss_mb=report.get("peak_rss_mb"),
            error=report.get("skipped"),
        )
        log.info("%s %s in %.2f s on %s", status, name, report["duration_s"], worker)
        bar.finished(name, status=status, duration_s=report["duration_s"], running=self._running_names(),
                     eta_s=self._eta())

    def _fail(self, name: str, error: str, bar: Progress, *, report: Mapping[str, Any] | None = None) -> None:
        report = report or {}
        self.outcomes[name] = StepOutcome(
            name=name, group=self.graph[name].group, status="failed", fingerprint=self.fps[name],
            duration_s=report.get("duration_s"), worker=self._label(report["worker"]) if report else None,
            started=report.get("started"), ended=report.get("ended"), error=error,
            peak_rss_mb=report.get("peak_rss_mb"),
        )
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
        """Record a step from its verified checkpoint's manifest."""
        manifest = self.store.manifest(name) or {}
        self.done.add(name)
        self.outcomes[name] = StepOutcome(
            name=name, group=self.graph[name].group, status="skipped" if manifest.get("skipped") else status,
            fingerprint=self.fps[name], duration_s=manifest.get("duration_s"), worker=manifest.get("worker"),
            metrics=dict(manifest.get("metrics") or {}), peak_rss_mb=manifest.get("peak_rss_mb"),
            error=manifest.get("skipped"),
        )

    def _harvest_finished(self, bar: Progress) -> None:
        """After Ctrl-C, keep the results of steps that finished but were not yet collected."""
        for future in [f for f in self.running if f.done() and not f.cancelled()]:
            if future.exception() is None and future.result()["error"] is None:
                self._collect(future, True, bar)

    # -- a remote step's log and files (executors without a shared disk)

    def _keep_handed_back(self, name: str, report: Mapping[str, Any]) -> None:
        """Write the log text and files a remote step handed back into the run folder (whole, atomically).

        The files' paths are recorded in ``logs/<step>.files.json``, so the next attempt at the
        step (a resume, or a re-run after its inputs changed) gets them back in its scratch folder.
        """
        if "log_text" not in report:  # a shared-disk worker wrote both itself
            return
        log_path = self.run_dir / "logs" / f"{name}.log"
        before = log_path.read_text(encoding="utf-8") if log_path.exists() else ""
        atomic_write_text(log_path, before + report["log_text"])
        files = report.get("files") or {}
        for relative, data in files.items():
            atomic_write_bytes(self._inside_run_dir(name, relative), data)
        if files:
            index = self._files_index(name)
            atomic_write_json(index.path, sorted(set(index.names) | set(files)))

    def _step_files(self, name: str) -> dict[str, bytes]:
        """The files a remote step handed back in earlier attempts, as they are now in the run folder."""
        files = {}
        for relative in self._files_index(name).names:
            path = self._inside_run_dir(name, relative)
            if path.is_file():
                files[relative] = path.read_bytes()
        return files

    def _files_index(self, name: str) -> _FilesIndex:
        path = self.run_dir / "logs" / f"{name}.files.json"
        try:
            names = json.loads(path.read_text())
        except (OSError, ValueError):
            names = []
        return _FilesIndex(path, [n for n in names if isinstance(n, str)])

    def _inside_run_dir(self, name: str, relative: str) -> Path:
        """``run_dir / relative``; raise ValueError when a step's file path would leave the run folder."""
        path = (self.run_dir / relative).resolve()
        if Path(relative).is_absolute() or not path.is_relative_to(self.run_dir):
            raise ValueError(f"Step {name!r} handed back the file {relative!r}, which is outside the run folder.")
        return path

    # -- small helpers

    def _running_names(self) -> list[str]:
        return sorted(self.running.values())

    def _label(self, host_pid: str) -> str:
        """Short stable worker names ``w0/<pid>``, numbered in order of first appearance."""
        if host_pid not in self._labels:
            pid = host_pid.rsplit(":", 1)[-1]
            self._labels[host_pid] = f"w{len(self._labels)}/{pid}"
        return self._labels[host_pid]

    def _eta(self) -> float | None:
        """Lower-bound estimate of the time left: max(longest remaining chain, remaining work / workers).

        ``None`` until earlier runs have recorded a duration for every step still to finish.
        """
        left = self.pending | set(self.running.values())
        if not left:
            return 0.0
        if any(self.expected[n] is None for n in left):
            return None
        now = time.perf_counter()
        remaining = {n: self.expected[n] for n in self.pending}
        for n in self.running.values():
            remaining[n] = max(0.0, self.expected[n] - (now - self.submitted_at[n]))
        chain: dict[str, float] = {}
        for name in reversed(self.graph.order):
            if name in remaining:
                tail = max((chain[d] for d in self.graph.dependents(name) if d in chain), default=0.0)
                chain[name] = remaining[name] + tail
        eta = max(max(chain.values()), sum(remaining.values()) / self.concurrency)
        return eta if math.isfinite(eta) else None

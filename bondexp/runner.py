"""Runs a step graph: one scheduler loop over an executor, with checkpoints, resume and failure isolation.

The loop (after Kedro's runner) submits every step whose needs are done, longest expected
critical path first, waits for the first to finish, checkpoints it in the parent, and repeats.
A failed step skips only the steps downstream of it; everything else runs and checkpoints, so
a resume re-runs just what is missing. The same loop drives one in-process worker, a process
pool and a Dask cluster (see :mod:`bondexp.executors`).
"""

from __future__ import annotations

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
from bondexp.checkpoints import (
    CheckpointStore,
    DurationHistory,
    RunLock,
    atomic_write_json,
    fingerprint,
    utc_iso,
)
from bondexp.errors import ConfigError, GraphError
from bondexp.graph import Graph
from bondexp.progress import Progress, plot_timeline
from bondexp.worker import StepContext, Task, execute_step

__all__ = ["RunResult", "StepContext", "StepOutcome", "dry_run_plan", "run_graph", "step_fingerprints"]

log = logging.getLogger("bondexp")

_TICK_S = 0.5  # how often the bar's elapsed time and ETA refresh while steps run


# ----------------------------------------------------------------------------- results


@dataclass
class StepOutcome:
    """How one step ended in this run.

    ``status`` is ``ran``, ``reused``, ``failed`` or ``skipped``; ``error`` is the traceback of a
    failed step or the reason a step was skipped (by itself, raising StepSkipped, or because a
    step it needs failed). ``started``/``ended`` are POSIX seconds measured
    in the worker (``None`` for reused and skipped steps); ``duration_s`` of a reused step is the
    one recorded when its checkpoint was made.
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "group": self.group,
            "duration_s": None if self.duration_s is None else round(self.duration_s, 4),
            "worker": self.worker,
            "started": utc_iso(self.started),
            "ended": utc_iso(self.ended),
            "metrics": self.metrics,
            "error": self.error,
            "fingerprint": self.fingerprint,
        }


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
        """The ``results.json`` form: ``{"steps": {name: {status, duration_s, worker, metrics, ...}}, "wall_s", "ok"}``."""
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
        return plot_timeline(self.steps.values(), path)

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
                         expected=expected, shared=dict(shared or {}))
        result = run.run(plan, progress=progress, t0=t0, executor_name=executor)
        history.update({n: s.duration_s for n, s in result.steps.items() if s.status == "ran"})
    return result


class _Scheduler:
    """State of one run: steps pending, running and done, crash suspects, and the outcomes so far."""

    def __init__(self, graph: Graph, *, run_dir: Path, store: CheckpointStore, backend: Any,
                 fingerprints: Mapping[str, str], expected: Mapping[str, float | None], shared: dict):
        self.graph = graph
        self.run_dir = run_dir
        self.store = store
        self.backend = backend
        self.fps = fingerprints
        self.expected = expected
        self.priority = _priorities(graph, expected)
        self.position = {name: i for i, name in enumerate(graph.order)}
        self.shared = shared
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
        executor = None
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        log.info("run %s: %d steps, %d reused, %d to run on %d worker(s)", self.run_dir, len(self.graph),
                 len(self.done), len(self.pending), self.concurrency)
        with Progress(total=len(self.graph), done=len(self.done), enabled=progress) as bar:
            try:
                executor = self.backend.start() if self.pending else None
                while self.pending or self.running:
                    executor = self._submit_ready(executor, bar)
                    finished, _ = wait(self.running, timeout=_TICK_S, return_when=FIRST_COMPLETED)
                    bar.refresh(running=self._running_names(), eta_s=self._eta())
                    for future in finished:
                        if future in self.running:
                            executor = self._collect(future, executor, bar)
                kill = False
            except KeyboardInterrupt:
                interrupted = True
                log.warning("interrupted: stopping workers; finished checkpoints are kept")
                self._harvest_finished(bar)
            finally:
                if executor is not None:
                    self.backend.stop(kill=kill)
        if interrupted:
            for name in self.graph.order:
                if name not in self.outcomes:
                    self._skip(name, "the run was interrupted before this step finished")
        steps = {name: self.outcomes[name] for name in self.graph.order}
        return RunResult(steps=steps, wall_s=time.perf_counter() - t0, run_dir=self.run_dir,
                         executor=executor_name, workers=self.concurrency, interrupted=interrupted)

    # -- the loop's parts

    def _submit_ready(self, executor: Any, bar: Progress) -> Any:
        """Submit ready steps (needs all done) up to the worker limit; raise if nothing can ever run."""
        ready = sorted((n for n in self.pending if set(self.graph[n].needs) <= self.done),
                       key=lambda n: (-self.priority[n], self.position[n]))
        suspects = [n for n in ready if n in self.suspects]
        if suspects or self.suspects & set(self.running.values()):
            ready = [] if self.running else suspects[:1]  # a suspect of a worker crash runs alone
        for name in ready[: max(0, self.concurrency - len(self.running))]:
            step = self.graph[name]
            task = Task(name=name, target=step.target, config=step.config, needs=step.needs,
                         run_dir=str(self.run_dir), workers=self.concurrency, threads=self.threads,
                         shared=self.shared)
            self.pending.discard(name)
            self.submitted_at[name] = time.perf_counter()
            log.info("start %s", name)  # before submit: the in-process executor runs the step inside it
            bar.started(name, running=[*self._running_names(), name], eta_s=self._eta())
            try:
                self.running[executor.submit(execute_step, task)] = name
            except BrokenExecutor as exc:  # the pool broke before its running futures said so
                self.pending.add(name)
                return self._pool_broke(list(self.running.values()), exc, bar)
        if not self.running and self.pending:
            ready_now = sorted(n for n in self.pending if set(self.graph[n].needs) <= self.done)
            raise GraphError(
                "The scheduler is stuck: nothing is running but steps remain. "
                f"todo={sorted(self.pending)} done={sorted(self.done)} ready={ready_now}"
            )
        return executor

    def _collect(self, future: Future, executor: Any, bar: Progress) -> Any:
        """Record a finished future: checkpoint it, or fail it and skip what needs it."""
        name = self.running.pop(future)
        exc = future.exception()
        if isinstance(exc, BrokenExecutor):
            return self._pool_broke([name, *self.running.values()], exc, bar)
        if exc is not None:
            self._fail(name, "".join(traceback.format_exception(exc)), bar)
            return executor
        report = future.result()
        if report["error"] is not None:
            self._fail(name, report["error"], bar, report=report)
            return executor
        self._finish(name, report, bar)
        return executor

    def _pool_broke(self, lost: list[str], exc: BaseException, bar: Progress) -> Any:
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
        return self.backend.start() if self.pending else None

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
            ended=report["ended"], metrics=dict(report["metrics"]), error=report.get("skipped"),
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

    def _reuse(self, name: str) -> None:
        manifest = self.store.manifest(name) or {}
        self.done.add(name)
        self.outcomes[name] = StepOutcome(
            name=name, group=self.graph[name].group, status="skipped" if manifest.get("skipped") else "reused",
            fingerprint=self.fps[name], duration_s=manifest.get("duration_s"), worker=manifest.get("worker"),
            metrics=dict(manifest.get("metrics") or {}), error=manifest.get("skipped"),
        )

    def _harvest_finished(self, bar: Progress) -> None:
        """After Ctrl-C, keep the results of steps that finished but were not yet collected."""
        for future in [f for f in self.running if f.done() and not f.cancelled()]:
            name = self.running[future]
            if future.exception() is None and future.result()["error"] is None:
                del self.running[future]
                self._finish(name, future.result(), bar)

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

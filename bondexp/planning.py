"""What a run will do: step fingerprints, which checkpoints to reuse and why, expected durations,
the order ready steps start in, which may start after a worker crash, the ETA, and the dry-run plan.

Functions of the graph, the checkpoints on disk and the durations history, plus two small records
the scheduler keeps while a run goes (:class:`CrashSuspects`, :class:`Eta`); nothing here runs a
step or writes a file.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from bondexp.checkpoints import CheckpointStore, DurationHistory, fingerprint
from bondexp.graph import Graph, Step

__all__ = [
    "FIRST_RUN_SECONDS",
    "CrashSuspects",
    "Eta",
    "dry_run_plan",
    "eta_s",
    "expected_durations",
    "history_key",
    "priorities",
    "ready_order",
    "reuse_plan",
    "step_code",
    "step_fingerprints",
    "step_kind",
    "submittable",
]


def step_fingerprints(graph: Graph, data_fingerprint: str) -> dict[str, str]:
    """Fingerprint of every step, from its target, config, its needs' fingerprints, the data's and its own code's."""
    fps: dict[str, str] = {}
    code = step_code(graph)
    for step in graph:
        inputs = {n: fps[n] for n in step.needs}
        fps[step.name] = fingerprint(target=step.target, config=step.config, inputs=inputs, data=data_fingerprint, code=code[step.name])
    return fps


def step_code(graph: Graph) -> dict[str, dict[str, str]]:
    """The user's own modules each step runs, with their sources' sha256: those its config names and its needs'.

    A need's code is the step's too: the tune step refits its target's estimator, and predict
    compares a model's recorded code, the tuned model's included (:func:`bondexp.owncode.changed`).
    """
    from bondexp.owncode import own_code

    code: dict[str, dict[str, str]] = {}
    for step in graph:
        code[step.name] = {k: v for need in step.needs for k, v in code[need].items()} | own_code(step.config)
    return code


def reuse_plan(graph: Graph, store: CheckpointStore, fps: Mapping[str, str]) -> dict[str, str | None]:
    """For each step, ``None`` if its checkpoint can be reused, else why it must run.

    A step whose need runs again runs again too, even if its own checkpoint verifies.
    """
    plan: dict[str, str | None] = {}
    code = step_code(graph)
    for step in graph:
        reason = store.verify(step.name, fps[step.name])
        recorded = (store.manifest(step.name) or {}).get("code") if reason and reason.startswith("stale") else None
        if recorded is not None and recorded != code[step.name]:
            from bondexp.owncode import changed

            reason = f"the code it runs changed: {', '.join(changed(recorded) or sorted(code[step.name]))}"
        rerun_needs = [n for n in step.needs if plan[n] is not None]
        if reason is None and rerun_needs:
            reason = f"needs {', '.join(rerun_needs)}, which will run"
        plan[step.name] = reason
    return plan


def history_key(step: Step) -> str:
    """A step's entry in the durations history: its name and a digest of what it does, the seed aside
    (its target, its config, the names of its needs).

    By name alone a step took the time of whatever step of that name ran last: after a run of one
    Lasso, the default suite's ``tune`` (about 30 s) was expected to take that run's 6 s, in the
    dry-run plan, the order and the ETA. A new seed keeps the entry: a sweep over seeds has its ETA.
    """
    config = {key: value for key, value in step.config.items() if key != "seed"}
    return f"{step.name}@{fingerprint(target=step.target, config=config, inputs=dict.fromkeys(step.needs, ''), data='')[:12]}"


def expected_durations(graph: Graph, store: CheckpointStore, history: DurationHistory) -> dict[str, float | None]:
    """Expected seconds per step: this folder's manifests first, then the durations history (see :func:`history_key`)."""
    known = history.read()
    expected: dict[str, float | None] = {}
    for name in graph.order:
        manifest = store.manifest(name)
        duration = manifest.get("duration_s") if manifest else None
        expected[name] = float(duration) if isinstance(duration, (int, float)) else known.get(history_key(graph[name]))
    return expected


#: Seconds each kind of step took on the default market (``benchmarks/suite.py``, ``workers=2``), by
#: a model step's estimator class or another step's target. They only rank the steps no run has
#: timed yet (a machine's first run, a cold benchmark): counted alike, those started in declaration
#: order, the quick ``basic`` and ``enhanced`` first, while ``advanced`` and ``automl``, the heads of
#: the longest paths (advanced -> tune -> drift; automl -> drift), waited; a first run now starts in
#: the order later runs take from the history. (On 2 cores the wall time hardly moved: tune's trials
#: fill both cores either way.)
#: Never shown as an expected duration.
FIRST_RUN_SECONDS = {
    "AutoMLRegressor": 10.6,
    "StackedRegressor": 9.6,
    "ConformalQuantileRegressor": 4.5,
    "BayesianHeteroscedasticRegressor": 3.5,
    "RegimeSwitchingRegressor": 2.0,
    "RandomForestRegressor": 1.4,
    "HistGradientBoostingRegressor": 0.7,
    "FactorRegressor": 0.6,
    "bondexp.tuning.step.tune": 12.6,
    "bondexp.steps.drift.drift": 2.9,
    "bondexp.steps.evaluate.evaluate": 2.1,
}


def step_kind(step: Step) -> str:
    """What :data:`FIRST_RUN_SECONDS` knows a step by: its estimator's class name (a model step), else its target."""
    estimator = step.config.get("estimator")
    if isinstance(estimator, Mapping) and isinstance(estimator.get("_target_"), str):
        return estimator["_target_"].rpartition(".")[2]
    return step.target


def priorities(graph: Graph, expected: Mapping[str, float | None]) -> dict[str, float]:
    """Longest expected path from each step to the end of the graph (its own time included).

    Ready steps are submitted highest first: longest-expected-first for independent steps, and
    steps that head long chains go before short leaves. An unknown duration counts as its kind's
    :data:`FIRST_RUN_SECONDS`, or as the mean known when the kind is not there either.
    """
    known = [d for d in expected.values() if d is not None]
    fallback = sum(known) / len(known) if known else 1.0
    rank: dict[str, float] = {}
    for name in reversed(graph.order):
        tail = max((rank[d] for d in graph.dependents(name)), default=0.0)
        own = expected[name]
        if own is None:
            own = FIRST_RUN_SECONDS.get(step_kind(graph[name]), fallback)
        rank[name] = own + tail
    return rank


def ready_order(graph: Graph, expected: Mapping[str, float | None]) -> Callable[[str], tuple[float, int, int]]:
    """Sort key for ready steps: highest :func:`priorities` first, then the step joining more needs, then declaration order.

    Ties come from a first run, when no duration is known and every step counts alike. A step
    that joins many others (``tune``, which refits its target trial after trial) then goes before
    a lone model step: on the default experiment's first run the risk models had taken the free
    worker while ``tune``, the start of the critical path's longest leg, waited.
    """
    rank = priorities(graph, expected)
    position = {name: i for i, name in enumerate(graph.order)}
    return lambda name: (-rank[name], -len(graph[name].needs), position[name])


def submittable(ready: Sequence[str], *, suspects: Collection[str], running: Collection[str]) -> list[str]:
    """The ready steps that may start now, best first: all of them, unless a worker crash is being isolated.

    A suspect (a step in flight when a worker process died) runs alone: nothing starts beside a
    running suspect, and a ready suspect waits for the workers to be idle, then starts by itself.
    """
    ready_suspects = [n for n in ready if n in suspects]
    if ready_suspects or set(suspects) & set(running):
        return [] if running else ready_suspects[:1]
    return list(ready)


class CrashSuspects:
    """The steps in flight when a worker process died and took the pool with it.

    A lone step lost that way is the culprit and fails. Several lost together become suspects:
    they run again, each alone (:func:`submittable`), so only the culprit fails the second time.
    """

    def __init__(self) -> None:
        self.names: set[str] = set()

    def culprit(self, lost: Sequence[str]) -> str | None:
        """The step to fail for a pool that broke while ``lost`` ran; ``None`` when they all run again as suspects."""
        if len(lost) == 1:
            return lost[0]
        self.names.update(lost)
        return None

    def submittable(self, ready: Sequence[str], *, running: Collection[str]) -> list[str]:
        """:func:`submittable` with these suspects."""
        return submittable(ready, suspects=self.names, running=running)


class Eta:
    """The time left while a run goes: :func:`eta_s`, timing each running step from its submission."""

    def __init__(self, graph: Graph, expected: Mapping[str, float | None], *, concurrency: int):
        self.graph = graph
        self.expected = expected
        self.concurrency = concurrency
        self._submitted_at: dict[str, float] = {}

    def submitted(self, name: str) -> None:
        self._submitted_at[name] = time.perf_counter()

    def __call__(self, *, pending: Collection[str], running: Collection[str]) -> float | None:
        now = time.perf_counter()
        return eta_s(
            self.graph,
            self.expected,
            pending=pending,
            concurrency=self.concurrency,
            running_for={n: now - self._submitted_at[n] for n in running},
        )


def eta_s(
    graph: Graph,
    expected: Mapping[str, float | None],
    *,
    pending: Collection[str],
    running_for: Mapping[str, float],
    concurrency: int,
) -> float | None:
    """Lower-bound estimate of the time left: max(longest remaining chain, remaining work / workers).

    ``running_for`` maps each running step to the seconds since it was submitted. ``None`` until
    earlier runs have recorded a duration for every step still to finish.
    """
    left = set(pending) | set(running_for)
    if not left:
        return 0.0
    known = {n: expected[n] for n in left}
    if any(d is None for d in known.values()):
        return None
    remaining = {n: float(known[n] or 0.0) for n in pending}
    for n, elapsed in running_for.items():
        remaining[n] = max(0.0, float(known[n] or 0.0) - elapsed)
    chain: dict[str, float] = {}
    for name in reversed(graph.order):
        if name in remaining:
            tail = max((chain[d] for d in graph.dependents(name) if d in chain), default=0.0)
            chain[name] = remaining[name] + tail
    eta = max(max(chain.values()), sum(remaining.values()) / concurrency)
    return eta if math.isfinite(eta) else None


def dry_run_plan(
    graph: Graph,
    *,
    run_dir: str | Path,
    shared: Mapping[str, Any] | None = None,
    data_fingerprint: str,
    durations_path: str | Path | None = None,
) -> str:
    """Describe what :func:`bondexp.runner.run_graph` would do, without doing any of it.

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
    plan = reuse_plan(graph, store, step_fingerprints(graph, data_fingerprint))
    expected = expected_durations(graph, store, DurationHistory(durations_path))
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

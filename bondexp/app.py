"""The experiment: check the config, prepare the data, run the step graph, write the run's reports.

`run(cfg, run_dir=...)` does the work and is what tests call; `bondexp.__main__` is a thin Hydra shell.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import textwrap
import threading
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bondexp.atomic import atomic_write_json
from bondexp.checkpoints import CheckpointStore, RunLock
from bondexp.config import absolute_sqlite_url, collect_models, launch_dir, plain_dict, validate_config
from bondexp.data import data_fingerprint, with_absolute_paths
from bondexp.errors import hide_passwords
from bondexp.executors import check_scheduler, warm_up
from bondexp.graph import build_graph, call_target
from bondexp.pipeline import build_steps
from bondexp.planning import dry_run_plan, step_fingerprints
from bondexp.results import RunResult
from bondexp.runner import run_graph
from bondexp.runs import read_json
from bondexp.script import raise_lost_ctrl_c, release_ctrl_c

log = logging.getLogger("bondexp")

#: File in the run folder naming the step fingerprints and command report.md was written for.
OUTPUTS_STAMP = ".outputs.json"


def durations_file(cache_dir: Path, data_cfg: dict[str, Any], *, workers: int) -> Path:
    """The step-duration history for this data and worker count: ``<cache_dir>/durations/<data>-w<workers>.json``.

    The history orders ready steps and gives the ETA. One file for all data let the last run set
    the next one's ETA whatever its size: after a ``data=small`` run (automl 5.7 s, advanced 2.9 s)
    a default run expected a third to a half of its steps' times (11.8 s, 8.6 s), after a
    million-row run 17-38 times them. So it is kept per data config (its seed aside) and worker
    count (a step's threads, tune's trial processes); data or a worker count never run shows no ETA.
    """
    data = hashlib.sha256(json.dumps(data_cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_dir / "durations" / f"{data}-w{workers}.json"


def data_summary(dataset, info: dict[str, Any]) -> dict[str, Any]:
    """Rows per split and residual statistics: what the run is about, in a few numbers."""
    import numpy as np  # here: a dry run and a finished resume load no data and need no numpy

    summary: dict[str, Any] = {
        "fingerprint": info["fingerprint"],
        "cache_hit": info["cache_hit"],
        "load_seconds": round(info["seconds"], 3),
        "n_rows": int(len(dataset.y)),
        "dropped_rows": dict(dataset.dropped),
        "notes": list(dataset.notes),
        "splits": {},
    }
    for split, rows in dataset.splits.items():
        y = np.asarray(dataset.y[rows])
        dates = np.asarray(dataset.meta["obs_date"][rows])
        summary["splits"][split] = {
            "rows": int(len(rows)),
            "first_date": str(dates.min()) if len(rows) else None,
            "last_date": str(dates.max()) if len(rows) else None,
            "residual_mean": float(y.mean()) if len(rows) else None,
            "residual_std": float(y.std()) if len(rows) else None,
            "residual_p05": float(np.quantile(y, 0.05)) if len(rows) else None,
            "residual_p95": float(np.quantile(y, 0.95)) if len(rows) else None,
        }
    return summary


def format_data_summary(summary: dict[str, Any]) -> str:
    """The data lines the run prints first: a table that fits an 80-column terminal (one line a split
    was about 105 characters, and wrapped mid-number)."""
    lines = [
        f"data: {summary['n_rows']:,} observations ({'cache hit' if summary['cache_hit'] else 'built'} in "
        f"{summary['load_seconds']:.2f}s), residual = market - DCF:",
        f"  {'split':<10} {'rows':>9}  {'dates':<22} {'mean':>7} {'sd':>6} {'p05':>7} {'p95':>7}",
    ]
    for split, s in summary["splits"].items():
        if not s["rows"]:
            lines.append(f"  {split:<10} {0:>9}")
            continue
        lines.append(
            f"  {split:<10} {s['rows']:>9,}  {s['first_date']}..{s['last_date']} {s['residual_mean']:>+7.3f} "
            f"{s['residual_std']:>6.3f} {s['residual_p05']:>+7.3f} {s['residual_p95']:>+7.3f}"
        )
    if summary["dropped_rows"]:
        lines.append(f"  dropped invalid rows, by problem (a row with several counts under each): {summary['dropped_rows']}")
    for note in summary.get("notes", ()):
        lines += textwrap.wrap(f"note: {note}.", width=80, initial_indent="  ", subsequent_indent="    ")
    return "\n".join(lines)


def resume_command(run_dir: Path) -> str:
    return f"python -m bondexp resume={shlex.quote(str(run_dir))}"


def run(
    cfg: DictConfig,
    *,
    run_dir: Path,
    model_choice: str | None = None,
    overrides: Sequence[str] = (),
    workers: int | None = None,
    job: str | None = None,
    progress_label: str | None = None,
) -> RunResult | None:
    """Run the experiment ``cfg`` in ``run_dir``; return the runner's result (None for a dry run).

    Raises ConfigError or DataValidationError before any step runs when the config or the data is
    wrong. ``workers`` overrides ``cfg.workers`` (a sweep job shares the machine with its siblings).
    ``job`` (a sweep's ``#0``) labels the data summary and prints the table in one piece under a
    line naming the job and its overrides; ``progress_label`` gives labelled progress lines instead
    of a bar, for runs printing to one terminal at once (a sweep's jobs running in parallel).
    """
    models = collect_models(cfg, choice=model_choice)
    validate_config(cfg, models=models)
    workers = int(workers or cfg.workers)
    run_dir = Path(run_dir)
    cache_dir = Path(cfg.cache_dir).expanduser()
    launched_in = launch_dir(cfg)
    data_cfg = with_absolute_paths(plain_dict(cfg.data), base=launched_in)  # steps may run elsewhere
    cfg.tune.storage = absolute_sqlite_url(cfg.tune.storage, launched_in)  # opened by the tune step's process, anywhere
    durations_path = durations_file(cache_dir, data_cfg, workers=workers)
    fingerprint = data_fingerprint(data_cfg, seed=int(cfg.seed))
    shared = _shared(data_cfg, cfg, cache_dir, fingerprint)
    loaded = None
    if cfg.backtest.origins is not None:  # the origins are months of the data: load it before the graph, dry run included
        loaded = _load_dataset(data_cfg, cfg, cache_dir, fingerprint)
    graph = build_graph(build_steps(cfg, models, months=loaded[0].meta["obs_date"] if loaded is not None else None))
    if cfg.dry_run:
        print(dry_run_plan(graph, run_dir=run_dir, shared=shared, data_fingerprint=fingerprint, durations_path=durations_path))
        return None

    # Before anything is written: a second command in a folder a run is using must change nothing there
    # (it rewrote data_summary.json, and Hydra its .hydra/, which config.py's output_subdir now leaves).
    with RunLock(run_dir):
        summary = _finished_run_summary(graph, run_dir, fingerprint)
        raise_lost_ctrl_c()  # one pressed while Hydra saved the config: before any data or worker
        if summary is None:
            if cfg.executor.name == "dask" and cfg.executor.address:
                check_scheduler(cfg.executor.address)  # a wrong address fails in seconds, before the data loads
            warm_up(cfg.executor.name, workers=workers)  # forkserver and step libraries start up while the data loads
            if loaded is None:
                loaded = _load_dataset(data_cfg, cfg, cache_dir, fingerprint)
            dataset, info = loaded
            summary = data_summary(dataset, info)
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_dir / "data_summary.json", summary)
            if dataset.dropped:
                atomic_write_json(run_dir / "invalid_rows.json", dict(dataset.dropped))
        else:
            dataset = None  # every step is reused: the parent needs no data, and the steps none either
        print(_labelled(format_data_summary(summary), job), flush=True)

        # Steps will run: import what the end needs while they do. Not beside a Dask client, whose
        # start-up imports at the same time can close a cycle of module locks with matplotlib's: CPython
        # then hands one thread a half-initialised module (seen once: no matplotlib.get_data_path).
        # With the steps in other processes the thread also draws a first PNG, and the timeline is drawn
        # on this thread only after joining it (matplotlib is not thread-safe). The report's module is
        # imported here (0.04 s), so that after a Ctrl-C this thread needs nothing the other may hold.
        warming = None
        if dataset is not None and cfg.executor.name != "dask":
            import bondexp.report  # noqa: F401

            tracked = cfg.tracking.name != "none"
            if tracked:
                from bondexp import tracking

                tracking.set_environment()
            warming = threading.Thread(target=_warm_up_outputs, args=(workers > 1, tracked), name="bondexp-warm-up", daemon=True)
            warming.start()
        try:
            result = run_graph(
                graph,
                run_dir=run_dir,
                workers=workers,
                executor=cfg.executor.name,
                executor_options={"address": cfg.executor.address},
                shared=shared,
                data_fingerprint=fingerprint,
                resume=True,
                progress=bool(cfg.progress),
                progress_label=progress_label,
                durations_path=durations_path,
                dataset=dataset,
                # what only the estimators can tell (a _target_, its parameters, the search spaces), before any step
                check=partial(call_target, "bondexp.preflight.config_error", {step.name: (step.target, step.config) for step in graph}),
                hold_ctrl_c_after=True,  # once every step has ended a Ctrl-C is held until the outputs are written
            )
        except BaseException as exc:  # a config error the check found, a locked folder, Ctrl-C during the check
            _join_warm_up(warming, after_ctrl_c=isinstance(exc, KeyboardInterrupt))
            raise
        try:
            _join_warm_up(warming, after_ctrl_c=result.interrupted)
            timeline = warming is None or not warming.is_alive()
            write_outputs(result, run_dir=run_dir, summary=summary, overrides=overrides, timeline=timeline)
            if cfg.tracking.name != "none":  # its module is imported only then
                from bondexp.tracking import track_run

                track_run(cfg, run_dir=run_dir, overrides=overrides, model_choice=model_choice)
        finally:
            held = release_ctrl_c()
        lines = [result.summary_table()]
        if (held or result.ctrl_c_after_steps) and not result.interrupted:
            lines.append("\nThe Ctrl-C came after the last step: the run finished, and its outputs are written.")
        if not result.ok and not result.interrupted:  # an interrupted run says so on exit (bondexp.__main__)
            lines.append(f"\nNot every step finished. Resume with:\n  {resume_command(run_dir)}")
        lines.append(f"\nrun folder: {run_dir}\nreport:     {run_dir / 'report.md'}")
        ended = [s.ended for s in result.steps.values() if s.ended is not None]
        if ended and not result.interrupted:  # the parent's own work after the graph: results.json, the timeline, report.md, tracking
            lines.append(f"outputs:    {time.time() - max(ended):.2f} s from the last step's end")
        print(_labelled("\n".join(lines), job, overrides=overrides), flush=True)
        return result


def _join_warm_up(warming: threading.Thread | None, *, after_ctrl_c: bool) -> None:
    """Wait for the warm-up thread before going on to the outputs, or to exit.

    Leaving the thread mid-drawing at exit aborts the interpreter ("terminate called without an
    active exception", exit -6: seen when the config check stopped a run). After a Ctrl-C the thread
    may never end: a KeyboardInterrupt that lands inside an import in this thread can leave Python's
    import lock held, and the thread's import of matplotlib waits for it for good (seen in CI: the
    run hung joining it). So the wait is bounded then, and the timeline waits for the resume.
    """
    if warming is not None:
        warming.join(timeout=_WARM_UP_WAIT_AFTER_CTRL_C_S if after_ctrl_c else None)


def _labelled(text: str, job: str | None, *, overrides: Sequence[str] = ()) -> str:
    """``text`` as a sweep's job prints it: under a line naming ``job`` (and its ``overrides``, as
    Hydra's launch lines do), or with its first line labelled; as it is for no ``job``."""
    if job is None:
        return text
    if overrides:
        return f"{job} : {hide_passwords(' '.join(overrides))}\n{text}"
    return f"{job} {text}"


def _load_dataset(data_cfg: dict[str, Any], cfg: DictConfig, cache_dir: Path, fingerprint: str) -> tuple[Any, dict[str, Any]]:
    """The run's dataset and load info; imported here so commands that load no data stay light."""
    from bondexp.features import load_dataset

    return load_dataset(data_cfg, seed=int(cfg.seed), cache_dir=cache_dir, fingerprint=fingerprint)


def _finished_run_summary(graph, run_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The data summary a finished run wrote, when every step's checkpoint looks reusable; else None.

    Such a resume reuses every step, so loading the data (and importing what loading and the
    data checks need) would only slow it down. "Looks reusable" is the manifest's fingerprint and
    the artifact's size: the runner verifies each sha256 right after, once, and re-runs a step whose
    bytes changed (its worker then loads the data itself).
    """
    path = run_dir / "data_summary.json"
    if not path.is_file():
        return None
    store = CheckpointStore(run_dir / "checkpoints")
    fingerprints = step_fingerprints(graph, fingerprint)
    for name in graph.order:
        manifest = store.manifest(name) or {}
        artifact = store.artifact_path(name)
        if (
            manifest.get("fingerprint") != fingerprints[name]
            or not artifact.is_file()
            or artifact.stat().st_size != manifest.get("size_bytes")
        ):
            return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def _shared(data_cfg: dict[str, Any], cfg: DictConfig, cache_dir: Path, fingerprint: str) -> dict[str, Any]:
    """Run-level values every step receives (plain data, no Hydra globals)."""
    return {"data": data_cfg, "seed": int(cfg.seed), "cache_dir": str(cache_dir), "data_fingerprint": fingerprint}


#: How long a run stopped by Ctrl-C waits for its warm-up thread (which takes about a second).
_WARM_UP_WAIT_AFTER_CTRL_C_S = 15.0


def _warm_up_outputs(render: bool, tracked: bool) -> None:
    """Import matplotlib (the timeline) while the graph runs, and MLflow when the run is tracked, so the
    parent's work after the last step is writing, not importing (matplotlib alone takes most of a
    second, MLflow three)."""
    from bondexp import plots

    plots.warm_up(render=render)
    if tracked:
        from bondexp import tracking

        tracking.warm_up()


def write_outputs(result: RunResult, *, run_dir: Path, summary: dict[str, Any], overrides: Sequence[str], timeline: bool = True) -> None:
    """results.json, the timeline (unless ``timeline`` is false) and report.md. Each step's own files the runner wrote as the step finished.

    When every step was reused and report.md was written for these same steps and command, only
    results.json is rewritten: the report would be the same, and reading the artifacts would slow a resume.
    """
    stamp = run_dir / OUTPUTS_STAMP
    key = _outputs_key(result, overrides)
    if key is not None and _outputs_current(stamp, key, run_dir):
        result.write_json(run_dir / "results.json")
        return
    from bondexp.report import SECTION_STEPS, write_report

    result.write_json(run_dir / "results.json")
    if timeline:
        result.plot_timeline(run_dir / "plots" / "timeline.png")
    store = CheckpointStore(run_dir / "checkpoints")
    finished = [name for name in SECTION_STEPS if name in result.steps and result.steps[name].status in ("ran", "reused")]
    artifacts = {name: store.load(name) for name in finished}
    write_report(
        run_dir,
        command=" ".join(["python -m bondexp", *map(shlex.quote, overrides)]),
        overrides=list(overrides),
        data_summary=summary,
        results=read_json(run_dir / "results.json"),  # as written: with every attempt's wall time
        artifacts=artifacts,
    )
    if result.ok:
        atomic_write_json(stamp, {"key": _outputs_key(result, overrides, reused_only=False)})


def _outputs_key(result: RunResult, overrides: Sequence[str], *, reused_only: bool = True) -> str | None:
    """A hash of every step's fingerprint and the command; None when a step did not finish (or, with
    ``reused_only``, when a step ran in this attempt: its outputs are new)."""
    wanted = ("reused", "skipped") if reused_only else ("ran", "reused", "skipped")
    if not result.steps or any(step.status not in wanted for step in result.steps.values()):
        return None
    payload = {
        "steps": {name: step.fingerprint for name, step in sorted(result.steps.items())},
        "overrides": sorted({o for o in overrides if not o.startswith(("resume=", "progress=", "workers="))}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _outputs_current(stamp: Path, key: str, run_dir: Path) -> bool:
    """Whether ``stamp`` says report.md was written for ``key`` and it is still there."""
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    return recorded.get("key") == key and (run_dir / "report.md").is_file()

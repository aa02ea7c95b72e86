"""Hydra callbacks of a sweep (`python -m bondexp -m ...`): its jobs' Ctrl-C and exit code, one table
comparing them, and with ``tracking=mlflow`` the parent MLflow run its jobs log under as children.

A job ends as a run does (failed steps, a config error, Ctrl-C) without ending its siblings: it
returns instead of exiting (:func:`bondexp.__main__._main`), and the sweep's exit code comes from
the jobs' folders once every job is done and the summary is written. Ctrl-C stops the running
jobs as it stops a run (finished steps checkpointed) and starts no other job; the same sweep run
again with ``hydra.sweep.dir`` set to its folder resumes every job.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import os
import re
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from bondexp.atomic import atomic_write_text
from bondexp.errors import hide_passwords
from bondexp.runs import as_typed, read_overrides, steps_began

#: The exit code of the sweep this process ran: 0 when every job ran every step; else 130 when
#: Ctrl-C stopped it, 2 when a job stopped on bad input before its steps, 1 when a step failed.
#: :func:`bondexp.__main__.main` exits with it once Hydra is done.
exit_code = 0
#: True in a process a launcher started for jobs (joblib's loky workers): see :func:`_job_process_init`.
IN_JOB_PROCESS = False
#: The file in a sweep's folder that says Ctrl-C stopped it: a job about to start then does not.
INTERRUPTED_MARK = ".interrupted"
#: The file in a job's folder saying why it ran no step (bad input, or the sweep was interrupted).
NOT_RUN_NOTE = "not_run.txt"
#: The folder of the sweep this process is launching, while it does.
_running: Path | None = None


def was_interrupted(sweep_dir: Path) -> bool:
    """Whether Ctrl-C stopped the sweep in ``sweep_dir``."""
    return (Path(sweep_dir) / INTERRUPTED_MARK).exists()


def mark_interrupted(sweep_dir: Path) -> None:
    """Say that Ctrl-C stopped the sweep in ``sweep_dir``: no other job starts."""
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    (Path(sweep_dir) / INTERRUPTED_MARK).touch()


def note_not_run(job_dir: Path, reason: str | None) -> None:
    """Keep why a job ran no step for the summary's ``note`` (the terminal's line scrolls away among
    the other jobs' output); ``None`` forgets an earlier reason, as a job that now runs does."""
    path = Path(job_dir) / NOT_RUN_NOTE
    if reason is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write_text(path, reason + "\n")


class _LabelledFormatter(logging.Formatter):
    """Another formatter's lines with a job's label in front."""

    def __init__(self, inner: logging.Formatter, label: str):
        super().__init__()
        self.inner, self.label = inner, label

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.label} {self.inner.format(record)}"


def label_console_logs(label: str) -> None:
    """Put ``label`` (``#1``) before the log lines this job prints to the terminal, as its progress lines have it.

    Jobs running at once share the terminal: two jobs' ``interrupted: stopping workers`` warnings
    came out alike, with no way to tell whose was whose. The job's log file keeps Hydra's format.
    """
    for handler in logging.getLogger().handlers:
        if type(handler) is not logging.StreamHandler:  # a FileHandler is a StreamHandler too
            continue
        if isinstance(handler.formatter, _LabelledFormatter):  # a job process's earlier job
            handler.formatter.label = label
        else:
            handler.setFormatter(_LabelledFormatter(handler.formatter or logging.Formatter(), label))


def sweep_exit_code(rows: list[dict[str, Any]], *, interrupted: bool) -> int:
    """The exit code of a sweep whose jobs' summary rows are ``rows`` (see :data:`exit_code`)."""
    statuses = {row["status"] for row in rows}
    if interrupted or "interrupted" in statuses:
        return 130
    return 2 if "not run" in statuses else 1 if "failed" in statuses else 0


def summarize_sweep(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder: its overrides, status, wall time, the model validation chose and its test
    RMSE, and a note: why a job did not run, or which steps failed."""
    rows = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        results_file = job / "results.json"
        row: dict[str, Any] = {
            "job": int(job.name),
            "overrides": hide_passwords(" ".join(read_overrides(job))),  # its latest attempt's, as bondexp.runs lists
            "status": "interrupted" if steps_began(job) else "not run",  # no results.json: killed, or stopped before its steps
            "ok": None,
            "wall_s": None,
            "best_model": None,
            "best_rmse": None,
            "note": None,
        }
        if results_file.exists():
            results = json.loads(results_file.read_text())
            row["ok"] = results.get("ok")
            row["wall_s"] = results.get("total_wall_s", results.get("wall_s"))  # a resumed job's every attempt
            row["status"] = "interrupted" if results.get("interrupted") else "ok" if row["ok"] else "failed"
            failed = [name for name, step in results.get("steps", {}).items() if step.get("status") == "failed"]
            if failed:
                row["note"] = "failed: " + ", ".join(failed)
        elif (job / NOT_RUN_NOTE).exists():
            row["note"] = (job / NOT_RUN_NOTE).read_text().strip().splitlines()[0]
        leaderboard = job / "leaderboard.csv"
        if leaderboard.exists():
            models = [r for r in csv.DictReader(leaderboard.open()) if r["model"] not in ("dcf_baseline", "oracle")]
            chosen = [r for r in models if r.get("val_rmse")]  # validation chooses; test RMSE is reported
            if chosen:
                best = min(chosen, key=lambda r: float(r["val_rmse"]))
                row["best_model"], row["best_rmse"] = best["model"], float(best["rmse"])
        rows.append(row)
    return rows


def write_sweep_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """Write ``summary.csv`` and ``summary.md`` in the sweep folder; return the rows."""
    rows = summarize_sweep(sweep_dir)
    if not rows:
        return rows
    header = list(rows[0])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(sweep_dir / "summary.csv", buffer.getvalue())
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v).replace("|", "\\|")) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write_text(sweep_dir / "summary.md", "\n".join(lines) + "\n")
    return rows


#: The joblib launcher's logger: its first line names every joblib setting (230 characters).
_JOBLIB_LAUNCHER_LOG = "hydra_plugins.hydra_joblib_launcher._core"
_JOBLIB_LINE = re.compile(r"Joblib\.Parallel\((?P<settings>.*)\) is launching (?P<n>\d+) jobs")


class _ShortLaunchLines(logging.Filter):
    """The joblib launcher's lines as a 100-column terminal shows them whole.

    Its first line spelled out all eleven joblib settings and wrapped over three lines; the job
    lines wrote a deleted key as ``~steps.tune=null`` and a colon as ``\\:``, not as the command said them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        found = _JOBLIB_LINE.fullmatch(message)
        if found is not None:
            settings = dict(item.partition("=")[::2] for item in found["settings"].split(","))
            message = f"Joblib is launching {found['n']} jobs, {settings.get('n_jobs', '?')} at a time (hydra.launcher.n_jobs)"
        elif message.startswith("\t#"):
            message = "  " + " ".join(as_typed(word) for word in message[1:].split(" "))
        record.msg, record.args = message, ()
        return True


class SweepSummary(Callback):
    """Registered under ``hydra.callbacks`` in conf/config.yaml: the jobs' Ctrl-C and exit code, and the summary.

    Jobs running at once (joblib's ``n_jobs`` other than 1) get the terminal's Ctrl-C themselves
    and stop as a run does. The launching process's first Ctrl-C therefore only marks the sweep
    interrupted, instead of joblib killing the jobs mid-write; a second one lets joblib kill them.
    joblib's worker processes ignore Ctrl-C between jobs (an idle one would die of it and abort the
    sweep) and answer it while they run one.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global exit_code, _running
        exit_code = 0
        sweep_dir = _running = Path(config.hydra.sweep.dir)
        (sweep_dir / INTERRUPTED_MARK).unlink(missing_ok=True)  # a sweep run again in its folder resumes its jobs
        _loky_workers(initializer=_job_process_init)
        launcher_log = logging.getLogger(_JOBLIB_LAUNCHER_LOG)
        if not any(isinstance(f, _ShortLaunchLines) for f in launcher_log.filters):
            launcher_log.addFilter(_ShortLaunchLines())
        if int(OmegaConf.select(config, "hydra.launcher.n_jobs", default=1) or 1) != 1:
            signal.signal(signal.SIGINT, functools.partial(_first_ctrl_c, sweep_dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global exit_code, _running
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _running = None
        exit_code = _wrap_up(Path(config.hydra.sweep.dir))


def wrap_up_killed() -> bool:
    """After a second Ctrl-C let joblib kill a sweep's jobs: the summary and the resume command all the
    same. Returns whether this process was launching a sweep."""
    global _running
    if _running is None:
        return False
    sweep_dir, _running = _running, None
    mark_interrupted(sweep_dir)
    _wrap_up(sweep_dir)
    return True


def _wrap_up(sweep_dir: Path) -> int:
    """Write the sweep's summary, say how it ended (and how to resume it); return its exit code."""
    if not sweep_dir.is_dir():
        return 0
    rows = write_sweep_summary(sweep_dir)
    interrupted = was_interrupted(sweep_dir)
    (sweep_dir / INTERRUPTED_MARK).unlink(missing_ok=True)
    code = sweep_exit_code(rows, interrupted=interrupted)
    if not rows:  # stopped before any job began: no summary written, nothing to resume
        return code
    counts = {status: sum(row["status"] == status for row in rows) for status in ("ok", "failed", "interrupted", "not run")}
    tally = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    if code == 130:
        again = [a for a in sys.argv[1:] if not a.startswith("hydra.sweep.dir=")]
        command = shlex.join(["python", "-m", "bondexp", *again, f"hydra.sweep.dir={sweep_dir.resolve()}"])
        print(f"\nInterrupted. Finished steps are checkpointed; resume the sweep with:\n  {command}", file=sys.stderr)
    print(f"sweep summary ({len(rows)} jobs: {tally}): {sweep_dir / 'summary.md'}", flush=True)
    return code


def _job_process_init() -> None:
    """Start of a joblib worker process of the sweep: Ctrl-C ignored until it runs a job (idle, it would die of it)."""
    global IN_JOB_PROCESS
    IN_JOB_PROCESS = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _loky_workers(**executor_options: Any) -> None:
    """Give joblib's ``loky`` backend these options for its worker processes (Hydra's launcher names it by name).

    ``register_parallel_backend`` is joblib's public way to do it; only this process (the sweep's
    launching one, ending with the sweep) sees the change, and only joblib's launcher uses joblib here.
    """
    from joblib.parallel import BACKENDS, register_parallel_backend

    loky = BACKENDS["loky"]
    if not isinstance(loky, functools.partial):  # once
        register_parallel_backend("loky", functools.partial(loky, **executor_options))


def _first_ctrl_c(sweep_dir: Path, signum: int, frame: object) -> None:
    """The first Ctrl-C of a sweep running jobs at once: they stop themselves; no other job starts; the next Ctrl-C kills."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    mark_interrupted(sweep_dir)
    message = "\nCtrl-C: the running jobs stop and keep their finished steps; no other job starts. Ctrl-C again to kill them.\n"
    os.write(sys.stderr.fileno(), message.encode())  # not print(): a signal handler may interrupt a print


class SweepTracking(Callback):
    """Registered under ``hydra.callbacks`` before SweepSummary (Hydra calls end hooks in reverse
    order, so the summary exists when the parent run logs it). Does nothing with ``tracking=none``."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from bondexp.tracking import start_sweep

        start_sweep(config, sweep_dir=Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from bondexp.tracking import end_sweep

        end_sweep(config, sweep_dir=Path(config.hydra.sweep.dir))

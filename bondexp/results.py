"""How a run ended: one :class:`StepOutcome` per step, the :class:`RunResult`, results.json and the summary table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bondexp.atomic import atomic_write_bytes, atomic_write_json
from bondexp.checkpoints import utc_iso
from bondexp.runs import read_json

__all__ = ["INTERRUPTED", "RunResult", "StepOutcome", "WorkerLabels"]


#: Why a step a Ctrl-C stopped (or that never started) was skipped; the summary says it once, as the run's state.
INTERRUPTED = "the run was interrupted before this step finished"


@dataclass
class StepOutcome:
    """How one step ended in this run.

    ``status`` is ``ran``, ``reused``, ``failed`` or ``skipped``; ``error`` is the traceback of a
    failed step or the reason a step was skipped (by itself, raising StepSkipped, or because a step
    it needs failed). ``started``/``ended`` are POSIX seconds measured
    in the worker (``None`` for reused and skipped steps); ``duration_s`` and ``peak_rss_mb`` (the
    step process's peak resident memory, MiB) of a reused step are the ones recorded when its
    checkpoint was made. ``warnings`` are the lines the step handed to the terminal (failed tuning
    trials): kept in its manifest, so a resume that reuses the step says them again.
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
    warnings: tuple[str, ...] = ()

    @classmethod
    def ran(cls, name: str, group: str, fingerprint: str, report: Mapping[str, Any], *, worker: str) -> StepOutcome:
        """The outcome of a step a worker finished: ``ran``, or ``skipped`` with its reason when it raised StepSkipped."""
        skipped = report.get("skipped")
        return cls(
            name=name,
            group=group,
            status="ran" if skipped is None else "skipped",
            fingerprint=fingerprint,
            duration_s=report["duration_s"],
            worker=worker,
            started=report["started"],
            ended=report["ended"],
            metrics=dict(report.get("metrics") or {}),
            error=skipped,
            peak_rss_mb=report.get("peak_rss_mb"),
            warnings=tuple(report.get("warnings") or ()),
        )

    @classmethod
    def failed(cls, name: str, group: str, fingerprint: str, error: str, report: Mapping[str, Any], *, worker: str | None) -> StepOutcome:
        """The outcome of a step that raised, or whose worker died (``report`` empty), with its error text."""
        return cls(
            name=name,
            group=group,
            status="failed",
            fingerprint=fingerprint,
            duration_s=report.get("duration_s"),
            worker=worker,
            started=report.get("started"),
            ended=report.get("ended"),
            error=error,
            peak_rss_mb=report.get("peak_rss_mb"),
        )

    @classmethod
    def from_manifest(cls, name: str, group: str, fingerprint: str, manifest: Mapping[str, Any], *, status: str = "reused") -> StepOutcome:
        """The outcome of a step taken from its verified checkpoint's manifest."""
        return cls(
            name=name,
            group=group,
            status="skipped" if manifest.get("skipped") else status,
            fingerprint=fingerprint,
            duration_s=manifest.get("duration_s"),
            worker=manifest.get("worker"),
            metrics=dict(manifest.get("metrics") or {}),
            peak_rss_mb=manifest.get("peak_rss_mb"),
            error=manifest.get("skipped"),
            warnings=tuple(manifest.get("warnings") or ()),
        )

    def manifest(self, target: str, needs: Mapping[str, str]) -> dict[str, Any]:
        """The checkpoint manifest of a step that ran (read back by :meth:`from_manifest`); ``needs`` maps each need to its fingerprint."""
        manifest: dict[str, Any] = {
            "target": target,
            "fingerprint": self.fingerprint,
            "needs": dict(needs),
            "duration_s": None if self.duration_s is None else round(self.duration_s, 4),
            "started": utc_iso(self.started),
            "ended": utc_iso(self.ended),
            "worker": self.worker,
            "peak_rss_mb": self.peak_rss_mb,
            "metrics": self.metrics,
        }
        if self.status == "skipped":  # checkpointed too: a resume reuses the skip, and needs get None
            manifest["skipped"] = self.error
        if self.warnings:
            manifest["warnings"] = list(self.warnings)
        return manifest

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
            "warnings": list(self.warnings),
            "fingerprint": self.fingerprint,
        }


class WorkerLabels:
    """Short stable worker names ``w0/<pid>`` for ``host:pid`` ids, numbered in order of first appearance."""

    def __init__(self) -> None:
        self._labels: dict[str, str] = {}

    def __call__(self, host_pid: str) -> str:
        if host_pid not in self._labels:
            pid = host_pid.rsplit(":", 1)[-1]
            self._labels[host_pid] = f"w{len(self._labels)}/{pid}"
        return self._labels[host_pid]


@dataclass
class RunResult:
    """Outcome of :func:`bondexp.runner.run_graph`: one :class:`StepOutcome` per step, in graph order.

    ``interrupted`` is true after Ctrl-C; finished checkpoints are kept and a resume continues.
    ``ctrl_c_after_steps``: a Ctrl-C came once every step had finished, and was held while the
    runner stopped its workers (the run is not interrupted, and its outputs are written).
    """

    steps: dict[str, StepOutcome]
    wall_s: float
    run_dir: Path
    executor: str = "local"
    workers: int = 1
    interrupted: bool = False
    ctrl_c_after_steps: bool = False

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
        """Write :meth:`to_dict` atomically to ``path`` (default ``<run_dir>/results.json``); return the path.

        ``wall_s`` is this attempt's; ``attempts`` and ``total_wall_s`` add up every attempt that wrote the
        file, so the resume of a finished 40 s run lists as 40.1 s, not as its own 0.07 s.
        """
        path = Path(path) if path is not None else self.run_dir / "results.json"
        before = read_json(path)  # an earlier attempt's, or {}
        record = self.to_dict()
        record["attempts"] = int(before.get("attempts", 1 if before else 0)) + 1
        earlier = before.get("total_wall_s", before.get("wall_s")) or 0.0
        record["total_wall_s"] = round(float(earlier) + self.wall_s, 4)
        atomic_write_json(path, record)
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
        Failed and skipped steps get their reason (a traceback's last line) under the table, except
        the steps a Ctrl-C left unfinished: the last line says the run was interrupted.
        """
        header = ("step", "group", "status", "time", "worker", "key metric")
        rows = [header]
        for s in self.steps.values():
            key = next((k for k in key_metrics if k in s.metrics), next(iter(s.metrics), None))
            metric = "" if key is None else f"{key}={_fmt_metric(s.metrics[key])}"
            took = "" if s.duration_s is None else f"{s.duration_s:.2f} s"
            rows.append((s.name, s.group, s.status, took, s.worker or "", metric))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        state = "interrupted" if self.interrupted else ("ok" if self.ok else "FAILED")
        lines.append(f"wall {self.wall_s:.2f} s, {state}")
        for s in self.steps.values():
            if s.status in ("failed", "skipped") and s.error and s.error != INTERRUPTED:
                lines.append(f"{s.status} {s.name}: {s.error.strip().splitlines()[-1]}")
        return "\n".join(lines)


def _fmt_metric(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)

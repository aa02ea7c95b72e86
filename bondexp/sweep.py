"""Hydra callbacks of a sweep (`python -m bondexp -m ...`): one table comparing its jobs, and with
``tracking=mlflow`` the parent MLflow run its jobs log under as children."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from bondexp.atomic import atomic_write_text


def summarize_sweep(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder: its overrides, status, wall time, the model validation chose and its test RMSE."""
    rows = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        overrides_file = job / ".hydra" / "overrides.yaml"
        results_file = job / "results.json"
        row: dict[str, Any] = {
            "job": int(job.name),
            "overrides": " ".join(OmegaConf.load(overrides_file)) if overrides_file.exists() else "",
            "ok": None,
            "wall_s": None,
            "best_model": None,
            "best_rmse": None,
        }
        if results_file.exists():
            results = json.loads(results_file.read_text())
            row["ok"] = results.get("ok")
            row["wall_s"] = results.get("wall_s")
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
        cells = [f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v)) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    atomic_write_text(sweep_dir / "summary.md", "\n".join(lines) + "\n")
    return rows


class SweepSummary(Callback):
    """Registered under ``hydra.callbacks`` in conf/config.yaml; runs once the sweep's jobs are done."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            rows = write_sweep_summary(sweep_dir)
            print(f"sweep summary ({len(rows)} jobs): {sweep_dir / 'summary.md'}")


class SweepTracking(Callback):
    """Registered under ``hydra.callbacks`` before SweepSummary (Hydra calls end hooks in reverse
    order, so the summary exists when the parent run logs it). Does nothing with ``tracking=none``."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from bondexp.tracking import start_sweep

        start_sweep(config, sweep_dir=Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from bondexp.tracking import end_sweep

        end_sweep(config, sweep_dir=Path(config.hydra.sweep.dir))

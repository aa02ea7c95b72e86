"""predictions.md: what was scored with what, how each model did against the market, the cheapest and richest bonds."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bondexp.predict.runfolder import RunModels


class Scores:
    """RMSE against the market price, per model and for the DCF fair value, summed over batches."""

    def __init__(self, models: Sequence[str]):
        self.sums = dict.fromkeys(["dcf", *models], 0.0)
        self.n = 0

    def add(self, columns: Mapping[str, np.ndarray]) -> None:
        self.n += len(columns["market_price"])
        for name in self.sums:
            self.sums[name] += float(np.sum(columns[f"{name}_market_minus_model"] ** 2))

    def rmse(self, name: str) -> float:
        return float(np.sqrt(self.sums[name] / self.n))

    def improvement_pct(self, name: str) -> float:
        """Percent by which the model's RMSE is below the DCF fair value's."""
        return 100.0 * (1.0 - self.rmse(name) / self.rmse("dcf"))


def ranking_columns(best: str) -> tuple:
    return (
        "bond_id",
        "obs_date",
        "rating",
        "sector",
        "market_price",
        "fair_value",
        f"{best}_price",
        f"{best}_price_lower",
        f"{best}_price_upper",
        f"{best}_market_minus_model",
        f"{best}_yield_gap_bp",
    )


def concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _best_said(run_dir: Path, best: str) -> str:
    """What ``best`` is the best of: the run, or (``models=`` a subset without the run's best) the models predicted."""
    from bondexp.runs import best_model_on_validation, read_json, read_leaderboard

    runs_best = best_model_on_validation(read_json(run_dir / "results.json"), read_leaderboard(run_dir))
    if runs_best in (None, best):
        return "the lowest validation RMSE of the run"
    return f"the lowest validation RMSE of the models predicted here (the run's own best, {runs_best}, was not asked for)"


def _leaderboard(run_dir: Path) -> dict[str, dict[str, str]]:
    """The run's leaderboard rows (test scores) by model name; empty when the run has none."""
    import csv

    path = run_dir / "leaderboard.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        return {row["model"]: row for row in csv.DictReader(fh)}


def _number(value: Any, digits: int = 3) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if not np.isfinite(value) else f"{value:.{digits}f}"


def render_markdown(
    run: RunModels,
    *,
    best: str,
    scores: Scores,
    ranked: Mapping[str, np.ndarray],
    data_cfg,
    dropped,
    notes: Sequence[str] = (),
    n_rows: int,
    n_ranked: int,
    overrides: Sequence[str],
    times: Mapping[str, float],
    wall: float,
    workers: int,
) -> str:
    """predictions.md: what was scored with what, the cheapest and richest bonds by the best model, where the time went."""
    board = _leaderboard(run.run_dir)
    summary = json.loads((run.run_dir / "data_summary.json").read_text())
    lines = [
        "# Predictions",
        "",
        f"- command: `{' '.join(['python -m bondexp.predict', *map(shlex.quote, overrides)])}`",
        f"- run: `{run.run_dir}` (data fingerprint `{summary.get('fingerprint', '?')[:16]}`); every model checkpoint "
        "verified against its sha256 and library versions",
        f"- new data: `{data_cfg['path']}`, {n_rows:,} rows predicted" + (f", rows dropped as invalid: {dict(dropped)}" if dropped else ""),
        *(f"- note: {note}" for note in notes),
        f"- best model: **{best}**, {_best_said(run.run_dir, best)} (the test split only reports)",
        "",
        "## Models",
        "",
        "| model | step fingerprint | val RMSE (run) | test RMSE (run) | test coverage (run) "
        "| RMSE vs market here | improvement over DCF here |",
        "|---|---|---|---|---|---|---|",
        f"| dcf (fair value) | | | {_number(board.get('dcf_baseline', {}).get('rmse'))} | | {_number(scores.rmse('dcf'))} | 0.0% |",
    ]
    for name, artifact in run.artifacts.items():
        row = board.get(name, {})
        lines.append(
            f"| {name} | `{run.manifests[name].get('fingerprint', '')[:12]}` | {_number(artifact.metrics.get('val_rmse'))} "
            f"| {_number(row.get('rmse'))} | {_number(row.get('coverage'))} | {_number(scores.rmse(name))} "
            f"| {_number(scores.improvement_pct(name), 1)}% |"
        )
    if len(ranked["bond_id"]):
        date = str(ranked["obs_date"][0])
        gap = np.asarray(ranked[f"{best}_market_minus_model"], dtype=np.float64)
        for title, rows in cheap_and_rich(gap, n_ranked):
            lines += ["", f"## {title}, {date}, by {best}", ""]
            if not len(rows):
                lines.append("None.")
                continue
            lines += [
                "| bond | rating | sector | market | model | interval | market - model | yield gap (bp) |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for i in rows:
                low, high = ranked.get(f"{best}_price_lower"), ranked.get(f"{best}_price_upper")
                interval = "-" if low is None or high is None else f"[{_number(low[i])}, {_number(high[i])}]"
                lines.append(
                    f"| {ranked['bond_id'][i]} | {ranked['rating'][i]} | {ranked['sector'][i]} | {_number(ranked['market_price'][i])} "
                    f"| {_number(ranked[f'{best}_price'][i])} | {interval} | {_number(gap[i])} "
                    f"| {_number(ranked[f'{best}_yield_gap_bp'][i], 1)} |"
                )
    return "\n".join(lines + time_table(times, wall=wall, n_rows=n_rows, workers=workers)) + "\n"


def cheap_and_rich(gap: np.ndarray, n_ranked: int) -> list[tuple[str, np.ndarray]]:
    """``[(title, row indices)]`` of the cheapest bonds (market below the model, most below first) and the
    richest (market above it), at most ``n_ranked`` each.

    Only bonds on that side: ranking the whole date put bonds above the model among "the 20 cheapest"
    when fewer than 20 were below it.
    """
    order = np.argsort(gap, kind="stable")
    cheap = order[gap[order] < 0][:n_ranked]
    rich = order[::-1][gap[order[::-1]] > 0][:n_ranked]
    return [
        (f"The {len(cheap)} cheapest (market below model)", cheap),
        (f"The {len(rich)} richest (market above model)", rich),
    ]


def time_table(times: Mapping[str, float], *, wall: float, n_rows: int, workers: int) -> list[str]:
    """The "Time" section: CPU seconds per phase (summed over the processes) and the wall time."""
    total = sum(times.values())
    lines = [
        "",
        "## Time",
        "",
        f"{n_rows:,} rows in {wall:.1f} s wall ({n_rows / max(wall, 1e-9):,.0f} rows/s), {workers} worker process(es), {total:.1f} s CPU",
        "",
        "| phase | CPU s | share |",
        "|---|---|---|",
    ]
    lines += [f"| {phase} | {seconds:.2f} | {100 * seconds / max(total, 1e-9):.1f}% |" for phase, seconds in times.items()]
    return lines

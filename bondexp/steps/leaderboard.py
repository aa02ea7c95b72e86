"""The leaderboard's files: its columns, its CSV and markdown tables and its plots, rendered as bytes.

The evaluate step returns these with its artifact (the runner writes them); ``report.md`` reuses the
markdown table. Kept apart from the scoring so the report reads the table without the scoring's imports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from bondexp import plots
from bondexp.artifacts import REFERENCES
from bondexp.tables import csv_text, markdown_table

#: Columns of every leaderboard row, in file order.
COLUMNS = ("model", "n", "rmse", "rmse_ci_low", "rmse_ci_high", "mae", "r2", "improvement_pct")
#: Leaderboard file columns: the test scores, then the validation RMSE that chooses the best model.
LEADERBOARD_COLUMNS = COLUMNS + ("val_rmse",)
#: Columns present only for some rows (oracle data, interval or probabilistic models), in file order.
OPTIONAL_COLUMNS = ("oracle_gap_pct", "level", "coverage", "pinball", "nll")
#: Best models drawn in the prediction plots.
N_PLOTTED = 3


def leaderboard_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The documented columns, then the optional ones that any row has."""
    return list(LEADERBOARD_COLUMNS) + [c for c in OPTIONAL_COLUMNS if any(c in row for row in rows)]


def leaderboard_markdown(rows: Sequence[Mapping[str, Any]], *, chosen: str | None = None) -> str:
    """The leaderboard as a markdown table (4 decimals; an empty cell where a column does not apply).

    With ``chosen`` (validation's best model) its name is marked with ``*`` and a line under the
    table says how it was chosen.
    """
    marked = [{**row, "model": f"{row['model']} *"} if chosen is not None and row.get("model") == chosen else row for row in rows]
    table = markdown_table(marked, leaderboard_columns(rows), decimals=4, text_columns=("model",))
    if chosen is None:
        return table
    return table + (
        f"\nSorted by test RMSE. \\* Validation chose **{chosen}** (lowest `val_rmse`); the test split only reports, it never chooses.\n"
    )


def leaderboard_files(artifact: Mapping[str, Any]) -> dict[str, bytes]:
    """``leaderboard.csv``, ``leaderboard.md`` and the plots under ``plots/``, rendered (path -> bytes)."""
    rows = [dict(row) for row in artifact["leaderboard"]]
    best = _best_models(artifact)
    return {
        "leaderboard.csv": csv_text(rows, leaderboard_columns(rows)).encode(),
        "leaderboard.md": leaderboard_markdown(rows, chosen=artifact["metrics"].get("best_model")).encode(),
        "plots/predicted_vs_actual.png": plots.predicted_vs_actual_png(artifact, best),
        "plots/residual_distribution.png": plots.residual_distribution_png(artifact, best),
        "plots/rmse_ci.png": plots.rmse_ci_png(rows, references=REFERENCES),
    }


def _best_models(artifact: Mapping[str, Any], k: int = N_PLOTTED) -> list[str]:
    """The ``k`` trained models with the lowest validation RMSE whose sampled predictions the artifact holds.

    Validation ranks them, as it chooses the best model: the leaderboard's order is the test
    split's, and plotting its first three showed models the run had not chosen.
    """
    held = artifact["samples"]["predictions"]
    rows = [row for row in artifact["leaderboard"] if row["model"] not in REFERENCES and row["model"] in held]
    return [row["model"] for row in sorted(rows, key=_validation_rank)][:k]


def _validation_rank(row: Mapping[str, Any]) -> float:
    value = row.get("val_rmse")
    return float(value) if value is not None and math.isfinite(float(value)) else math.inf

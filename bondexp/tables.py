"""Rows of a table as CSV or markdown text: the leaderboard's file formats.

Rows are mappings; ``columns`` names which keys appear, in order. A missing key, None or a
non-finite float is an empty cell, so a column that does not apply to a row stays blank.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _is_float(value: Any) -> bool:
    return isinstance(value, (float, np.floating))


def _blank(value: Any) -> bool:
    return value is None or (_is_float(value) and not np.isfinite(value))


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV with a header line and full-precision floats (``repr``), so the file reads back exactly."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        values = [row.get(c) for c in columns]
        writer.writerow(["" if _blank(v) else repr(float(v)) if v is not None and _is_float(v) else str(v) for v in values])
    return buffer.getvalue()


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, decimals: int, text_columns: Sequence[str] = ()) -> str:
    """A markdown table, floats to ``decimals`` places; ``text_columns`` are left-aligned, the rest right."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" if c in text_columns else "---:" for c in columns) + "|"]
    for row in rows:
        values = [row.get(c) for c in columns]
        lines.append("| " + " | ".join("" if _blank(v) else f"{v:.{decimals}f}" if _is_float(v) else str(v) for v in values) + " |")
    return "\n".join(lines) + "\n"

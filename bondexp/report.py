"""The run's ``report.md``: one page a reader opens first, built from what the run left behind.

It reads plain values (the results dict, the report steps' light artifacts), not Hydra, so it can
be rebuilt from a run folder's files. A section whose step was not chosen or failed says so in one
line; the report never fails because a step did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bondexp.artifacts import ModelArtifact
from bondexp.atomic import atomic_write_text
from bondexp.errors import hide_passwords
from bondexp.steps.backtest import report_section as backtest_section
from bondexp.steps.leaderboard import leaderboard_markdown

#: Steps whose light artifacts the report's sections read, by step name.
SECTION_STEPS = ("evaluate", "drift", "tune", "backtest")
#: Metrics shown per step in the step table (the first two a step reports, in this order).
KEY_METRICS = ("val_rmse", "best_model", "best_rmse", "best_value", "n_alert", "n_warn", "val_coverage", "n_iter")


def write_report(
    run_dir,
    *,
    command: str,
    overrides: Sequence[str],
    data_summary: Mapping[str, Any],
    results: Mapping[str, Any],
    artifacts: Mapping[str, Any],
) -> Path:
    """Write ``<run_dir>/report.md`` (atomically) and return its path.

    Parameters
    ----------
    run_dir : path
        The run folder; PNGs under its ``plots/`` are linked.
    command, overrides
        How the run was launched, shown so it can be repeated.
    data_summary : dict
        Rows per split, residual statistics and whether the feature cache was hit.
    results : dict
        The ``results.json`` dict: ``steps`` ({name: status, duration_s, worker, metrics, error}),
        ``wall_s``, ``ok``.
    artifacts : dict
        The light artifacts of the :data:`SECTION_STEPS` that finished, by step name (``tune``'s a
        :class:`~bondexp.artifacts.ModelArtifact`, the others dicts).

    Returns
    -------
    pathlib.Path
        The report's path.
    """
    run_dir = Path(run_dir)
    steps = results.get("steps", {})
    sections = [
        _header(run_dir, command=command, overrides=overrides, results=results),
        _data(data_summary),
        _steps(steps, run_dir=run_dir),
        _leaderboard(artifacts.get("evaluate"), status=_status(steps, "evaluate")),
        _drift(artifacts.get("drift"), status=_status(steps, "drift")),
        _tuning(artifacts.get("tune"), status=_status(steps, "tune")),
        *([backtest_section(artifacts.get("backtest"), status=_status(steps, "backtest"))] if "backtest" in steps else []),
        _plots(run_dir),
    ]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n\n".join(section.rstrip() for section in sections) + "\n")
    return path


# ----------------------------------------------------------------------------- sections


def _header(run_dir: Path, *, command: str, overrides: Sequence[str], results: Mapping[str, Any]) -> str:
    ok = results.get("ok")
    if results.get("interrupted"):
        state = "interrupted"
    else:
        state = "every step finished" if ok is True else "some steps failed or were skipped" if ok is False else "unknown"
    wall = results.get("wall_s")
    lines = [
        f"# bondexp run: {run_dir.name}",
        "",
        f"Outcome: **{state}**"
        + (f", wall {wall:.2f} s" if isinstance(wall, (int, float)) else "")
        + (f" ({results['total_wall_s']:.2f} s over {results['attempts']} attempts)" if results.get("attempts", 1) > 1 else "")
        + (f", executor {results['executor']} with {results.get('workers', '?')} worker(s)" if results.get("executor") else "")
        + ".",
        "",
        "```",
        hide_passwords(command),  # a tune.storage or tracking.uri password: not in a file one shares
        "```",
        "",
        "Overrides: "
        + (", ".join(f"`{hide_passwords(o)}`" for o in overrides) if overrides else "none (the defaults of `conf/config.yaml`)."),
    ]
    return "\n".join(lines)


def _data(summary: Mapping[str, Any]) -> str:
    if not summary:
        return "## Data\n\nNo data summary was recorded."
    how = "loaded from the feature cache" if summary.get("cache_hit") else "built and cached"
    lines = [
        "## Data",
        "",
        f"{summary.get('n_rows', 0):,} observations, {how}"
        + (f" in {summary['load_seconds']:.2f} s" if "load_seconds" in summary else "")
        + (f" (data fingerprint `{summary['fingerprint'][:12]}`)" if summary.get("fingerprint") else "")
        + ". The residual is market clean price minus DCF fair value, per 100 face.",
        "",
        "| split | rows | first date | last date | residual mean | sd | p05 | p95 |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for split, s in summary.get("splits", {}).items():
        lines.append(
            f"| {split} | {s.get('rows', 0):,} | {s.get('first_date') or ''} | {s.get('last_date') or ''} | "
            + " | ".join(_num(s.get(k), 3) for k in ("residual_mean", "residual_std", "residual_p05", "residual_p95"))
            + " |"
        )
    if summary.get("dropped_rows"):
        lines += ["", f"Invalid rows dropped at load, by problem (a row with several counts under each): {dict(summary['dropped_rows'])}."]
    for note in summary.get("notes", ()):
        lines += ["", f"Note: {note}."]
    return "\n".join(lines)


def _steps(steps: Mapping[str, Mapping[str, Any]], *, run_dir: Path) -> str:
    lines = ["## Steps", ""]
    if not steps:
        return "\n".join(lines + ["No step ran."])
    lines += ["| step | group | status | time (s) | worker | key metrics |", "|---|---|---|---:|---|---|"]
    for name, s in steps.items():
        metrics = s.get("metrics") or {}
        shown = [k for k in KEY_METRICS if k in metrics][:2] or list(metrics)[:1]  # a step of yours: its first, as the terminal's table
        cells = ", ".join(f"{k}={_value(metrics[k])}" for k in shown)
        lines.append(
            f"| {name} | {s.get('group', '')} | {s.get('status', '')} | {_num(s.get('duration_s'), 2)} | "
            f"{s.get('worker') or ''} | {cells} |"
        )
    problems = [(name, s) for name, s in steps.items() if s.get("status") in ("failed", "skipped") and s.get("error")]
    if problems:
        lines.append("")
        lines += [f"- {s['status']} **{name}**: {str(s['error']).strip().splitlines()[-1]}" for name, s in problems]
    lines.append("")
    if (run_dir / "plots" / "timeline.png").exists():
        lines.append("Timeline of the steps per worker: [plots/timeline.png](plots/timeline.png)")
    else:
        lines.append("No timeline: no step ran in this invocation (everything was reused).")
    return "\n".join(lines)


def _leaderboard(artifact: Mapping[str, Any] | None, *, status: str) -> str:
    lines = ["## Leaderboard (test split)", ""]
    rows = (artifact or {}).get("leaderboard", [])
    if not rows:
        return "\n".join(lines + [f"No leaderboard: the evaluate step {status}."])
    n = rows[0].get("n")
    config = (artifact or {}).get("config", {})
    chosen = (artifact or {}).get("metrics", {}).get("best_model")
    sample = f"{n:,} test rows" if isinstance(n, (int, np.integer)) else "the test rows"
    if config.get("sample_pct", 100) < 100:
        sample += f" ({config['sample_pct']:g}% sample, stratified by rating, seed {config.get('seed')})"
    lines += [
        f"Scored on {sample}, sorted by RMSE of the residual (per 100). `dcf_baseline` is the DCF fair "
        "value alone (residual 0); `oracle` is the synthetic market's own expectation, the best achievable. "
        "`improvement_pct` is the share of the DCF's RMSE a model removes; `oracle_gap_pct` the share of "
        "the oracle's improvement it has not reached (0 = as good as the oracle). The RMSE interval is a "
        f"{100 * config.get('confidence', 0.95):g}% row bootstrap.",
        "",
        leaderboard_markdown(rows, chosen=chosen),
    ]
    best = next((r for r in rows if r["model"] == chosen), None)
    if best is not None:
        lines.append(
            f"Best model, chosen on validation (lowest validation RMSE, {_num(best.get('val_rmse'), 4)}): "
            f"**{best['model']}**, test RMSE {best['rmse']:.4f} "
            f"[{_num(best.get('rmse_ci_low'), 4)}, {_num(best.get('rmse_ci_high'), 4)}]" + _against_dcf(best.get("improvement_pct"))
        )
    breakdown = (artifact or {}).get("breakdown", {})
    for key, title in (("rating", "RMSE by rating"), ("regime", "RMSE by market regime")):
        table = _breakdown_table(breakdown, key, order=[r["model"] for r in rows])
        if table:
            lines += ["", f"### {title}", "", table]
    return "\n".join(lines)


def _breakdown_table(breakdown: Mapping[str, Mapping[str, Any]], key: str, *, order: Sequence[str]) -> str:
    """Models as rows, groups (ratings or regimes) as columns; coverage in brackets for interval models."""
    models = [m for m in order if breakdown.get(m, {}).get(key)]
    if not models:
        return ""
    groups: list[str] = []
    for m in models:
        groups += [g for g in breakdown[m][key] if g not in groups]
    sizes = {g: next(breakdown[m][key][g]["n"] for m in models if g in breakdown[m][key]) for g in groups}
    lines = ["| model | " + " | ".join(f"{g} (n={sizes[g]:,})" for g in groups) + " |", "|---|" + "---:|" * len(groups)]
    for m in models:
        cells = []
        for g in groups:
            entry = breakdown[m][key].get(g)
            cell = "" if entry is None else _num(entry["rmse"], 4)
            if entry is not None and "coverage" in entry:
                cell += f" (cov {_num(entry['coverage'], 2)})"
            cells.append(cell)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _drift(artifact: Mapping[str, Any] | None, *, status: str) -> str:
    lines = ["## Drift (train against test)", ""]
    if artifact is None:
        return "\n".join(lines + [f"No drift findings: the drift step {status}."])
    features = artifact.get("features", {})
    flagged = [(name, f) for name, f in features.items() if f.get("status") in ("warn", "alert")]
    flagged.sort(key=lambda item: (item[1]["status"] != "alert", item[0]))
    if flagged:
        lines += [
            f"{sum(f['status'] == 'alert' for _, f in flagged)} feature(s) alert and "
            f"{sum(f['status'] == 'warn' for _, f in flagged)} warn, of {len(features)}.",
            "",
            "| feature | status | why | PSI | KS p-value (corrected) |",
            "|---|---|---|---:|---:|",
        ]
        lines += [
            f"| {name} | {f['status']} | {f.get('why', '')} | {_num(f.get('psi'), 4)} | {_pvalue(f.get('ks_pvalue'))} |"
            for name, f in flagged
        ]
    else:
        lines.append(f"No feature drifted (all {len(features)} ok).")
    stale = [(name, m) for name, m in artifact.get("models", {}).items() if m.get("status") in ("warn", "alert")]
    if stale:
        lines += [
            "",
            "Models whose predictions or errors drifted against validation: "
            + ", ".join(f"{name} ({m['status']}, test/validation RMSE {_num(m.get('rmse_ratio'), 2)})" for name, m in stale)
            + ".",
        ]
    elif artifact.get("models"):
        lines += ["", "No model's predictions or errors drifted against validation."]
    return "\n".join(lines)


def _tuning(artifact: ModelArtifact | None, *, status: str) -> str:
    lines = ["## Tuning", ""]
    if artifact is None:
        return "\n".join(lines + [f"No tuning results: the tune step {status}."])
    record = artifact.info["tuning"]
    params = record.get("best_params", {})
    lines += [
        f"Tuned **{record.get('target', '?')}** over {record['n_trials']} trial(s): best objective {_num(record.get('best_value'), 4)} "
        f"(validation RMSE of a fit on the whole training split). Validation RMSE untuned {_num(record.get('untuned_value'), 4)}, "
        f"tuned {_num(record.get('val_rmse'), 4)}.",
        "",
    ]
    if record.get("failures"):  # a study whose trials mostly failed searched far less than its trial count says
        lines += [f"{record['failures']} (every trial's error in `tuning.json`, tracebacks in `logs/tune.log`)", ""]
    lines.append("Best parameters: " + (", ".join(f"`{k}={_value(v)}`" for k, v in params.items()) if params else "none."))
    improved = bool(record.get("improved", False))
    lines += ["", f"Improved on the untuned model: **{'yes' if improved else 'no'}**."]
    if record.get("note"):
        lines += ["", record["note"]]
    elif not improved:
        lines += ["", "Tuning did not beat the untuned model on the validation split; keep the untuned parameters."]
    return "\n".join(lines)


def _plots(run_dir: Path) -> str:
    pngs = sorted((run_dir / "plots").glob("*.png")) if (run_dir / "plots").is_dir() else []
    if not pngs:
        return "## Plots\n\nNo plots were written."
    return "## Plots\n\n" + "\n".join(f"- [{p.stem}](plots/{p.name})" for p in pngs)


# ----------------------------------------------------------------------------- formatting


def _status(steps: Mapping[str, Mapping[str, Any]], name: str) -> str:
    """Why a step's artifact is missing, as the end of a sentence."""
    step = steps.get(name)
    if step is None:
        return "was not part of this run"
    if step.get("status") == "skipped":
        return f"was skipped: {step.get('error') or 'a step it needs failed'}"
    if step.get("status") == "failed":
        return "failed (see Steps)"
    return f"left no artifact (status {step.get('status')!r})"


def _num(value: Any, decimals: int) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not np.isfinite(value):
        return ""
    return f"{value:.{decimals}f}"


def _pvalue(value: Any) -> str:
    """Four decimals, or two significant digits below 0.001 (a strong alert is not "0.0000")."""
    if _num(value, 4) and 0 < value < 1e-3:
        return f"{value:.2g}"
    return _num(value, 4)


def _against_dcf(improvement_pct: Any) -> str:
    """The end of the best-model sentence: how its RMSE compares with the DCF alone."""
    if not _num(improvement_pct, 1):
        return "."
    side = "lower" if improvement_pct >= 0 else "higher"
    return f", {abs(improvement_pct):.1f}% {side} than the DCF fair value alone."


def _value(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and not isinstance(value, bool):
        return f"{value:.4g}"
    return str(value)

"""Every plot bondexp draws, each rendered to PNG bytes.

Plots take plain data (artifacts, leaderboard rows, step outcomes) and return the PNG as bytes,
so a step can hand its pictures back to whoever writes the run folder (see :mod:`bondexp.atomic`);
nothing here touches the disk. Figures are matplotlib's own objects, drawn by its Agg canvas, never
through pyplot, as matplotlib advises for a web server (any program that only saves images): no
backend to choose, no display, no global list of open figures to close, and pyplot's import saved.
matplotlib is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

#: Colors of the drift statuses.
DRIFT_COLORS = {"ok": "tab:green", "warn": "tab:orange", "alert": "tab:red"}
#: Colors of the runner's step statuses.
STEP_COLORS = {"ran": "tab:green", "reused": "tab:gray", "failed": "tab:red", "skipped": "tab:orange"}
#: Points per scatter panel; a seeded subsample keeps the PNG small and readable.
MAX_SCATTER_POINTS = 5000


def _figure(figsize: tuple[float, float]):
    """A new figure, drawn by the Agg canvas when saved."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def warm_up(*, render: bool = False) -> None:
    """Import matplotlib now, and with ``render`` draw one small PNG too: a caller with idle time pays
    for the import and (``render``) the Agg canvas, fonts and PNG writer before its first plot.
    Render only where no other thread plots meanwhile: matplotlib is not thread-safe."""
    fig = _figure((1, 1))
    if render:
        ax = fig.subplots()
        ax.barh([0], [1.0])
        ax.set_title("warm-up")
        _png(fig, dpi=20)


def _tight_layout(fig) -> None:
    """``fig.tight_layout()``, done once. It leaves a placeholder layout engine behind, for which
    ``savefig`` draws the whole figure once more before drawing it into the PNG (a quarter of the
    drift plot's time); without the engine the PNG is the same, byte for byte."""
    fig.tight_layout()
    fig.set_layout_engine(None)


def _png(fig, *, dpi: int) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- drift


def drift_png(artifact: Mapping[str, Any]) -> bytes:
    """Four panels of a drift artifact: PSI per feature, market-state evidence, monthly PSI of drifted
    features, monthly RMSE per model."""
    fig = _figure((14, 9))
    axes = fig.subplots(2, 2)
    _drift_psi(axes[0, 0], artifact)
    _drift_market(axes[0, 1], artifact)
    _drift_monthly_psi(axes[1, 0], artifact)
    _drift_model_rmse(axes[1, 1], artifact)
    _tight_layout(fig)
    return _png(fig, dpi=100)


def _drift_psi(ax, artifact: Mapping[str, Any]) -> None:
    limits, features = artifact["thresholds"], artifact["features"]
    binned = [n for n, f in features.items() if f["kind"] != "market_state"]
    ax.bar(binned, [features[n]["psi"] or 0.0 for n in binned], color=[DRIFT_COLORS[features[n]["status"]] for n in binned])
    ax.axhline(limits["psi_warn"], color=DRIFT_COLORS["warn"], ls="--", label=f"warn {limits['psi_warn']}")
    ax.axhline(
        limits["psi_alert"],
        color=DRIFT_COLORS["alert"],
        ls="--",
        label=f"alert {limits['psi_alert']} (codes; others need a month-level shift)",
    )
    ax.set_title("PSI, train vs test (bar color = status)")
    ax.tick_params(axis="x", rotation=60)
    ax.legend()


def _drift_market(ax, artifact: Mapping[str, Any]) -> None:
    limits, features = artifact["thresholds"], artifact["features"]
    market = [n for n, f in features.items() if f["kind"] == "market_state"]
    x = np.arange(len(market))
    for offset, key, hatch in ((-0.2, "ks_pvalue", ""), (0.2, "volatility_pvalue", "//")):
        evidence = [-np.log10(max(features[n][key] if features[n][key] is not None else 1.0, 1e-12)) for n in market]
        label = "level shift" if key == "ks_pvalue" else "volatility (one-sided)"
        ax.bar(
            x + offset,
            evidence,
            width=0.4,
            hatch=hatch,
            label=label,
            color=[DRIFT_COLORS[features[n]["status"]] for n in market],
            edgecolor="black",
        )
    ax.axhline(-np.log10(limits["ks_alpha"]), color="grey", ls="--", label=f"corrected p = {limits['ks_alpha']}")
    ax.set_xticks(x, market)
    ax.set_ylabel("-log10 corrected p")
    ax.set_title("market state: level shift and volatility (bar color = status)")
    ax.legend(fontsize="small")


def _drift_monthly_psi(ax, artifact: Mapping[str, Any]) -> None:
    limits, features, months = artifact["thresholds"], artifact["features"], artifact["months"]
    shown = [n for n in artifact["drifted"] if features[n]["kind"] != "market_state"][:8]
    for name in shown:
        ax.plot(months, [features[name]["monthly"][m]["psi"] for m in months], marker="o", label=name)
    ax.axhline(limits["psi_warn"], color=DRIFT_COLORS["warn"], ls="--")
    ax.axhline(limits["psi_alert"], color=DRIFT_COLORS["alert"], ls="--")
    ax.set_title("monthly PSI of drifted features" if shown else "monthly PSI: no drifted feature")
    ax.tick_params(axis="x", rotation=60)
    if shown:
        ax.legend(fontsize="small")


def _drift_model_rmse(ax, artifact: Mapping[str, Any]) -> None:
    months = artifact["months"]
    for name, entry in artifact["models"].items():
        (line,) = ax.plot(months, [entry["monthly"][m]["rmse"] for m in months], marker=".", label=f"{name} ({entry['status']})")
        ax.axhline(entry["rmse_validation"], color=line.get_color(), ls=":", lw=0.8)
    ax.set_title("test RMSE per month (dotted: validation RMSE)")
    ax.tick_params(axis="x", rotation=60)
    if artifact["models"]:
        ax.legend(fontsize="small")


# ----------------------------------------------------------------------------- evaluate


def predicted_vs_actual_png(artifact: Mapping[str, Any], names: Sequence[str]) -> bytes:
    """Predicted against actual residual, one panel per model in ``names``, from an evaluate
    artifact's samples (a seeded subsample of points)."""
    y = np.asarray(artifact["samples"]["y"])
    shown = np.arange(len(y))
    if len(y) > MAX_SCATTER_POINTS:
        shown = np.sort(np.random.default_rng(artifact["config"]["seed"]).choice(len(y), MAX_SCATTER_POINTS, replace=False))
    rmse = {row["model"]: row["rmse"] for row in artifact["leaderboard"]}
    fig = _figure((4.6 * max(len(names), 1), 4.4))
    axes = fig.subplots(1, max(len(names), 1), squeeze=False)
    limits = np.quantile(y, [0.005, 0.995]) if len(y) else np.array([-1.0, 1.0])
    for ax, name in zip(axes[0], names, strict=False):  # no models: one empty panel
        pred = np.asarray(artifact["samples"]["predictions"][name])
        ax.scatter(y[shown], pred[shown], s=4, alpha=0.35, color="tab:blue", rasterized=True)
        ax.plot(limits, limits, color="black", lw=1, ls="--", label="perfect")
        ax.set_xlim(limits)
        ax.set_ylim(limits)
        ax.set_title(f"{name} (test RMSE {rmse[name]:.3f})")
        ax.set_xlabel("actual residual (market - DCF, per 100)")
        ax.set_ylabel("predicted residual")
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Predicted vs actual residual, {len(y):,} test rows ({len(shown):,} drawn)")
    _tight_layout(fig)
    return _png(fig, dpi=110)


def residual_distribution_png(artifact: Mapping[str, Any], names: Sequence[str]) -> bytes:
    """Histogram of the actual residual against the predicted residuals of ``names`` (shared bins)."""
    y = np.asarray(artifact["samples"]["y"])
    fig = _figure((8, 4.5))
    ax = fig.subplots()
    lo, hi = np.quantile(y, [0.005, 0.995]) if len(y) else (-1.0, 1.0)
    bins = np.linspace(lo, hi, int(np.clip(np.sqrt(len(y)), 10, 60)) + 1)
    ax.hist(y, bins=bins, density=True, color="lightgray", edgecolor="gray", label="actual")
    for name in names:
        pred = np.asarray(artifact["samples"]["predictions"][name])
        ax.hist(pred, bins=bins, density=True, histtype="step", lw=1.6, label=f"{name} predicted")
    ax.axvline(0.0, color="black", lw=1, ls=":", label="DCF alone (0)")
    ax.set_xlabel("residual: market clean price - DCF fair value (per 100; central 99% of actual)")
    ax.set_ylabel("density")
    ax.set_title("Residual distribution on the evaluated test rows")
    ax.legend(fontsize=8)
    _tight_layout(fig)
    return _png(fig, dpi=110)


def rmse_ci_png(rows: Sequence[Mapping[str, Any]], *, references: Sequence[str] = ()) -> bytes:
    """Test RMSE per leaderboard row with its bootstrap interval, best at the top; ``references`` in gray."""
    rows = list(rows)[::-1]
    fig = _figure((8, 0.45 * len(rows) + 1.5))
    ax = fig.subplots()
    positions = np.arange(len(rows))
    rmse = np.array([row["rmse"] for row in rows], dtype=np.float64)
    low = np.array([row.get("rmse_ci_low", np.nan) for row in rows], dtype=np.float64)
    high = np.array([row.get("rmse_ci_high", np.nan) for row in rows], dtype=np.float64)
    errors = np.nan_to_num(np.vstack([rmse - low, high - rmse]), nan=0.0)
    colors = ["tab:gray" if row["model"] in references else "tab:blue" for row in rows]
    ax.barh(positions, rmse, xerr=errors, color=colors, alpha=0.8, capsize=3)
    ax.set_yticks(positions, [row["model"] for row in rows])
    ax.set_xlabel("test RMSE of the residual (per 100) with bootstrap interval")
    ax.set_title("RMSE per model (gray: DCF baseline and oracle)")
    _tight_layout(fig)
    return _png(fig, dpi=110)


# ----------------------------------------------------------------------------- tuning


def tuning_history_png(record: Mapping[str, Any]) -> bytes:
    """Objective per complete trial, the running best, the untuned trial's value and where trials failed.

    ``record`` is what ``tuning.json`` holds: ``trials`` (``number``, ``state``, ``value``, ``untuned``),
    ``target`` and ``best_value``.
    """
    from matplotlib.ticker import MaxNLocator

    trials = record["trials"]
    done = [t for t in trials if t["state"] == "COMPLETE"]
    failed = [t for t in trials if t["state"] == "FAIL"]
    fig = _figure((8, 4.5))
    ax = fig.subplots()
    if done:
        numbers = np.array([t["number"] for t in done])
        values = np.array([t["value"] for t in done])
        ax.scatter(numbers, values, s=22, color="tab:blue", label="trial (validation RMSE)")
        ax.step(numbers, np.minimum.accumulate(values), where="post", color="tab:green", label="best so far")
    if failed:  # a failed trial has no value: mark it along the bottom edge
        ax.scatter(
            [t["number"] for t in failed],
            np.full(len(failed), 0.03),
            s=22,
            marker="x",
            color="tab:gray",
            transform=ax.get_xaxis_transform(),
            label="failed trial",
        )
    untuned = [t for t in done if t["untuned"]]
    if untuned:
        ax.axhline(untuned[0]["value"], color="tab:orange", linestyle="--", label="untuned parameters")
    if trials:  # the failed marks use axes coordinates for y, which autoscaling ignores
        ax.set_xlim(-0.5, max(t["number"] for t in trials) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("objective: validation RMSE")
    ax.set_title(f"Tuning {record['target']}: best {record['best_value']:.4f}")
    ax.legend(loc="upper right", fontsize=8)
    _tight_layout(fig)
    return _png(fig, dpi=110)


# ----------------------------------------------------------------------------- the runner


def timeline_png(steps: Iterable[Any], *, title: str = "bondexp run timeline") -> bytes | None:
    """One bar per step on its worker's row over time, colored by status.

    Parameters
    ----------
    steps : iterable
        Step outcomes with ``name``, ``status``, ``worker``, ``started`` and ``ended``
        (POSIX seconds); steps without times (reused, skipped) are left out.

    Returns
    -------
    bytes or None
        The PNG, or ``None`` when no step ran in this run (nothing to draw).
    """
    rows = [s for s in steps if s.started is not None and s.ended is not None]
    if not rows:
        return None
    from matplotlib.patches import Patch

    t0 = min(s.started for s in rows)
    workers = sorted({s.worker for s in rows}, key=_worker_sort_key)
    fig = _figure((10, 1.2 + 0.6 * len(workers)))
    ax = fig.subplots()
    for s in rows:
        y = workers.index(s.worker)
        ax.barh(
            y,
            s.ended - s.started,
            left=s.started - t0,
            height=0.6,
            color=STEP_COLORS.get(s.status, "tab:blue"),
            edgecolor="black",
            linewidth=0.5,
        )
        ax.text(s.started - t0 + (s.ended - s.started) / 2, y, s.name, ha="center", va="center", fontsize=8)
    ax.set_yticks(range(len(workers)), workers)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first step started")
    ax.set_title(title)
    statuses = sorted({s.status for s in rows})
    ax.legend(
        handles=[Patch(color=STEP_COLORS.get(k, "tab:blue"), label=k) for k in statuses],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=8,
    )
    _tight_layout(fig)
    return _png(fig, dpi=100)


def _worker_sort_key(label: str) -> tuple[int, str]:
    """Workers in number order (``w2`` before ``w10``), unnumbered labels last."""
    head = label.split("/", 1)[0]
    return (int(head[1:]) if head[1:].isdigit() else 1 << 30, label)


# ----------------------------------------------------------------------------- backtest


def backtest_png(artifact: Mapping[str, Any], *, references: Sequence[str], overall: str) -> bytes:
    """RMSE of each model at each walk-forward origin; the reference rows (DCF, oracle) dashed."""
    origins = artifact["origins"]
    fig = _figure((max(7.0, 0.6 * len(origins) + 3), 4.8))
    ax = fig.subplots()
    x = np.arange(len(origins))
    present = [n for n in references if any(r["model"] == n for r in artifact["rows"])]
    for name in list(artifact["models"]) + present:
        by_origin = {r["origin"]: r["rmse"] for r in artifact["rows"] if r["model"] == name and r["origin"] != overall}
        style = {"ls": "--", "color": "gray" if name == references[0] else "black", "lw": 1.2} if name in references else {"marker": "o"}
        ax.plot(x, [by_origin[o] for o in origins], label=name, **style)
    ax.set_xticks(x, origins, rotation=45, ha="right")
    ax.set_xlabel("origin (first scored month; each refit saw only the months before it)")
    ax.set_ylabel("RMSE of the residual (per 100)")
    ax.set_title("Walk-forward backtest: RMSE by origin")
    ax.legend(fontsize=8, ncol=2)
    _tight_layout(fig)
    return _png(fig, dpi=110)

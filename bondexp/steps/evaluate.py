"""The evaluate step: every model scored on the same sampled test rows, against the DCF and the oracle.

The leaderboard answers "how much closer to the market price does each model get than the DCF fair
value alone?". The target is the residual (market clean price minus DCF fair clean price, per 100),
so the DCF alone predicts a residual of 0 and ``dcf_baseline`` is that constant. On synthetic data
``oracle`` predicts with the generator's own expectation (``oracle_prediction``): no model can
expect to beat it, and ``oracle_gap_pct`` says how much of the way from DCF to oracle is left.

Every model is scored on the same rows with the same bootstrap resamples, so the RMSE intervals
of two models are comparable. The resamples are of rows; residuals of one month move together,
so the intervals are a lower bound on the uncertainty, not an exact one.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

from bondexp.bondtable import RATINGS
from bondexp.checkpoints import atomic_write_text
from bondexp.errors import ConfigError, DataValidationError
from bondexp.features import Dataset, dataset_for

#: Names of the synthetic market's regime codes (``oracle_regime``).
REGIMES = ("calm", "stress", "crisis")
#: Leaderboard rows that are references, not trained models.
BASELINE, ORACLE = "dcf_baseline", "oracle"
REFERENCES = (BASELINE, ORACLE)
#: Columns of every leaderboard row, in file order.
COLUMNS = ("model", "n", "rmse", "rmse_ci_low", "rmse_ci_high", "mae", "r2", "improvement_pct")
#: Columns present only for some rows (oracle data, interval or probabilistic models), in file order.
OPTIONAL_COLUMNS = ("oracle_gap_pct", "level", "coverage", "pinball", "nll")
#: Keys of the step's config slice.
CONFIG_KEYS = ("sample_pct", "n_bootstrap", "confidence", "seed")
#: Best models drawn in the prediction plots.
N_PLOTTED = 3
#: Points per scatter panel; a seeded subsample keeps the PNG small and readable.
MAX_SCATTER_POINTS = 5000
#: Bootstrap draws held in memory at once (resamples x rows).
_BOOTSTRAP_CHUNK = 1 << 22


# ----------------------------------------------------------------------------- the step


def evaluate(config: Dict[str, Any], inputs: Dict[str, Any], ctx) -> Dict[str, Any]:
    """The step: the leaderboard of every model in ``inputs`` on the sampled test split.

    Parameters
    ----------
    config : dict
        ``sample_pct``, ``n_bootstrap``, ``confidence`` and ``seed``.
    inputs : dict
        Step artifacts; those holding ``predictions`` are the models scored.
    ctx : StepContext
        ``shared`` locates the run's dataset.

    Returns
    -------
    dict
        The artifact of :func:`evaluate_models`.

    Raises
    ------
    ConfigError
        An unknown config key, a value out of range, or no model among ``inputs``.
    DataValidationError
        A model's test predictions do not cover the test split or are not finite.
    """
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"The 'eval' config keys must be among {list(CONFIG_KEYS)}. Got {unknown} instead.")
    models = {artifact.get("name", name): artifact for name, artifact in inputs.items()
              if isinstance(artifact, Mapping) and "predictions" in artifact}  # the tune step's is <target>_tuned
    artifact = evaluate_models(
        dataset_for(ctx.shared),
        models,
        sample_pct=float(config.get("sample_pct", 100.0)),
        n_bootstrap=int(config.get("n_bootstrap", 500)),
        confidence=float(config.get("confidence", 0.95)),
        seed=int(config.get("seed", 0)),
    )
    m = artifact["metrics"]
    ctx.log.info(
        "evaluate: %d of %d test rows, best %s (RMSE %.4f, %+.1f%% against the DCF)",
        m["n_evaluated"], m["n_test"], m["best_model"], m["best_rmse"], m["best_improvement_pct"],
    )
    return artifact


def evaluate_models(
    dataset: Dataset,
    models: Mapping[str, Mapping[str, Any]],
    *,
    sample_pct: float = 100.0,
    n_bootstrap: int = 500,
    confidence: float = 0.95,
    seed: int = 0,
) -> Dict[str, Any]:
    """Score ``models`` (model-step artifacts) and the references on the same sampled test rows.

    Returns
    -------
    dict
        ``leaderboard`` (rows of :func:`score_model`, sorted by RMSE), ``breakdown``
        ({model: {"rating": ..., "regime": ...}}), ``sample_rows`` (positions in the test split),
        ``samples`` (the sampled target and each model's sampled mean prediction, for the plots),
        ``validation_rmse`` and ``groups`` ({model: value}) from the model artifacts, ``config``
        and flat ``metrics``.

    Raises
    ------
    ConfigError
        No model, a model named like a reference row, or an option out of range.
    DataValidationError
        A model's test predictions do not cover the test split or are not finite.
    """
    if not models:
        raise ConfigError("The evaluate step needs at least one model step; its inputs hold no 'predictions'.")
    if not 0 < sample_pct <= 100:
        raise ConfigError(f"The 'eval.sample_pct' config key must be a percentage in (0, 100]. Got {sample_pct!r} instead.")
    if n_bootstrap < 1:
        raise ConfigError(f"The 'eval.n_bootstrap' config key must be at least 1. Got {n_bootstrap!r} instead.")
    if not 0 < confidence < 1:
        raise ConfigError(f"The 'eval.confidence' config key must be in (0, 1). Got {confidence!r} instead.")
    taken = sorted(set(models) & set(REFERENCES))
    if taken:
        raise ConfigError(f"Model names must differ from the leaderboard's reference rows {list(REFERENCES)}. Got {taken}; rename the model.")
    n_test = len(dataset.splits["test"])
    rows = sample_rows(dataset, pct=sample_pct, seed=seed)
    y = dataset.target("test")[rows]
    meta = {name: dataset.meta_of("test", name)[rows] for name in dataset.meta}
    candidates: Dict[str, Dict[str, Any]] = {}
    for name, artifact in models.items():
        candidates[name] = _sampled(name, artifact["predictions"]["test"], rows, n_test=n_test)
    candidates[BASELINE] = {"mean": np.zeros(len(rows))}
    if dataset.has_oracle:
        candidates[ORACLE] = {"mean": np.asarray(meta["oracle_prediction"], dtype=np.float64)}

    options = dict(meta=meta, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    leaderboard, breakdown = [], {}
    for name, prediction in candidates.items():
        leaderboard.append(score_model(name, prediction, y, **options))
        breakdown[name] = score_breakdown(prediction, y, meta=meta)
    leaderboard.sort(key=lambda row: row["rmse"])
    trained = [row for row in leaderboard if row["model"] not in REFERENCES]
    best = trained[0]
    metrics: Dict[str, Any] = {
        "best_model": best["model"],
        "best_rmse": best["rmse"],
        "best_improvement_pct": best["improvement_pct"],
        "dcf_rmse": next(row["rmse"] for row in leaderboard if row["model"] == BASELINE),
        "n_evaluated": int(len(rows)),
        "n_test": int(n_test),
        "n_models": len(trained),
    }
    if dataset.has_oracle:
        metrics["oracle_rmse"] = next(row["rmse"] for row in leaderboard if row["model"] == ORACLE)
        metrics["best_oracle_gap_pct"] = best["oracle_gap_pct"]
    return {
        "leaderboard": leaderboard,
        "breakdown": breakdown,
        "sample_rows": rows,
        "samples": {
            "y": y,
            "predictions": {name: np.asarray(prediction["mean"], dtype=np.float64) for name, prediction in candidates.items()},
        },
        "validation_rmse": {name: _val_rmse(artifact) for name, artifact in models.items()},
        "groups": {name: str(artifact.get("group", "")) for name, artifact in models.items()},
        "config": {"sample_pct": sample_pct, "n_bootstrap": n_bootstrap, "confidence": confidence, "seed": seed},
        "metrics": metrics,
    }


def _sampled(name: str, prediction: Mapping[str, Any], rows: np.ndarray, *, n_test: int) -> Dict[str, Any]:
    """The ``rows`` of each per-row array of a model's test prediction (scalars such as ``level`` kept)."""
    out = {}
    for key, value in prediction.items():
        if np.ndim(value) == 0:
            out[key] = value
            continue
        value = np.asarray(value)
        if value.shape != (n_test,):
            raise DataValidationError(
                f"The test prediction '{key}' of model '{name}' must hold one value per test row ({n_test}). "
                f"Got shape {value.shape} instead."
            )
        out[key] = value[rows]
    return out


def _val_rmse(artifact: Mapping[str, Any]) -> float:
    """A model's validation RMSE as its step reported it (NaN when it reported none)."""
    return float(artifact.get("metrics", {}).get("val_rmse", np.nan))


# ----------------------------------------------------------------------------- sampling


def sample_rows(dataset: Dataset, *, pct: float, seed: int) -> np.ndarray:
    """Positions within the test split to evaluate: ``pct`` percent of them, stratified by rating.

    Each rating gets its proportional share (largest remainders, so the total is ``pct`` percent
    of the rows, rounded) and at least one row when it has any, so a rare rating is never left
    out; the total may then exceed the target by a row per such rating. Rows are drawn at random
    (seeded) within each rating and returned in time order. ``pct=100`` returns every row.

    Returns
    -------
    numpy.ndarray
        Sorted int64 positions into ``dataset.splits["test"]``.

    Raises
    ------
    ConfigError
        ``pct`` is not in (0, 100].
    """
    if not 0 < pct <= 100:
        raise ConfigError(f"The 'eval.sample_pct' config key must be a percentage in (0, 100]. Got {pct!r} instead.")
    strata = np.asarray(dataset.meta_of("test", "rating"), dtype=np.int64)
    n = len(strata)
    if pct == 100 or n == 0:
        return np.arange(n, dtype=np.int64)
    labels, strata, counts = np.unique(strata, return_inverse=True, return_counts=True)
    quota = counts * (round(n * pct / 100) / n)
    take = np.floor(quota).astype(np.int64)
    short = round(n * pct / 100) - int(take.sum())
    take[np.argsort(take - quota, kind="stable")[:short]] += 1
    take = np.clip(take, 1, counts)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(n), strata))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(n) - starts[strata[order]]
    return np.sort(order[rank < take[strata[order]]])


# ----------------------------------------------------------------------------- scoring


def score_model(
    name: str,
    prediction: Mapping[str, Any],
    y: np.ndarray,
    *,
    meta: Mapping[str, np.ndarray],
    n_bootstrap: int,
    confidence: float,
    seed: int,
) -> Dict[str, Any]:
    """One leaderboard row: the errors of ``prediction`` against the residuals ``y``.

    ``improvement_pct`` is ``100 * (1 - rmse / rmse_dcf)``, where the DCF alone predicts a residual
    of 0 (``rmse_dcf`` is the root mean square of ``y``): the share of the DCF's price error the
    model removes. ``oracle_gap_pct`` (when ``meta`` has ``oracle_prediction``) is
    ``100 * (rmse - rmse_oracle) / (rmse_dcf - rmse_oracle)``, the share of the oracle's reduction
    of the DCF's RMSE the model has not achieved: 0 is as good as the oracle, 100 no better than
    the DCF, below 0 luckier than the oracle on these rows. The RMSE interval is the percentile
    bootstrap at ``confidence`` over ``n_bootstrap`` row resamples drawn from ``seed``, the same
    for every model of the same rows. Interval predictions (``lower``, ``upper``, ``level``) add
    ``level``, ``coverage`` and ``pinball`` (mean pinball loss of the band's two quantiles); a
    ``std`` adds ``nll`` (mean Gaussian negative log-likelihood).

    Returns
    -------
    dict
        ``model, n, rmse, rmse_ci_low, rmse_ci_high, mae, r2, improvement_pct`` and, as they
        apply, ``oracle_gap_pct, level, coverage, pinball, nll``.

    Raises
    ------
    DataValidationError
        A prediction array does not match ``y`` in length, holds a non-finite value, or a
        ``std`` is not positive.
    """
    y = np.asarray(y, dtype=np.float64)
    mean = _checked(name, "mean", prediction["mean"], len(y))
    err = y - mean
    sq = err**2
    rmse = float(np.sqrt(sq.mean())) if len(y) else np.nan
    rmse_dcf = float(np.sqrt(np.mean(y**2))) if len(y) else np.nan
    low, high = bootstrap_rmse_ci(sq, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    sst = float(np.sum((y - y.mean()) ** 2)) if len(y) else 0.0
    row: Dict[str, Any] = {
        "model": name,
        "n": int(len(y)),
        "rmse": rmse,
        "rmse_ci_low": low,
        "rmse_ci_high": high,
        "mae": float(np.abs(err).mean()) if len(y) else np.nan,
        "r2": 1.0 - float(sq.sum()) / sst if sst > 0 else np.nan,
        "improvement_pct": 100.0 * (1.0 - rmse / rmse_dcf) if rmse_dcf > 0 else np.nan,
    }
    if "oracle_prediction" in meta:
        rmse_oracle = float(np.sqrt(np.mean((y - np.asarray(meta["oracle_prediction"], dtype=np.float64)) ** 2)))
        reach = rmse_dcf - rmse_oracle
        row["oracle_gap_pct"] = 100.0 * (rmse - rmse_oracle) / reach if reach > 0 else np.nan
    if "lower" in prediction and "upper" in prediction:
        level = float(prediction.get("level", 0.9))
        lower = _checked(name, "lower", prediction["lower"], len(y))
        upper = _checked(name, "upper", prediction["upper"], len(y))
        row["level"] = level
        row["coverage"] = float(np.mean((y >= lower) & (y <= upper)))
        row["pinball"] = interval_pinball(y, lower, upper, level=level)
    if "std" in prediction:
        std = _checked(name, "std", prediction["std"], len(y))
        if np.any(std <= 0):
            raise DataValidationError(
                f"The predicted 'std' of model '{name}' must be positive. Got {int(np.sum(std <= 0))} value(s) <= 0."
            )
        row["nll"] = float(np.mean(0.5 * np.log(2 * np.pi * std**2) + sq / (2 * std**2)))
    return row


def _checked(name: str, key: str, values: Any, n: int) -> np.ndarray:
    """``values`` as float64 after checking it has ``n`` finite entries (a silent NaN would rank anywhere)."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (n,):
        raise DataValidationError(
            f"The prediction '{key}' of model '{name}' must hold one value per evaluated row ({n}). "
            f"Got shape {values.shape} instead."
        )
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataValidationError(
            f"The prediction '{key}' of model '{name}' must be finite. Got {int(bad.sum())} non-finite value(s), "
            f"the first at evaluated row {int(np.flatnonzero(bad)[0])}."
        )
    return values


def bootstrap_rmse_ci(sq_errors: np.ndarray, *, n_bootstrap: int, confidence: float, seed: int) -> tuple:
    """Percentile bootstrap interval of the RMSE from squared errors, ``(low, high)``.

    Resamples are drawn in chunks of whole resamples so memory stays bounded on large test
    splits; the draws depend only on ``seed``, ``n_bootstrap`` and the number of rows.
    """
    n = len(sq_errors)
    if n == 0:
        return (np.nan, np.nan)
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _BOOTSTRAP_CHUNK // n)
    means = np.empty(n_bootstrap)
    for start in range(0, n_bootstrap, per_chunk):
        stop = min(start + per_chunk, n_bootstrap)
        means[start:stop] = sq_errors[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.sqrt(means), [tail, 1.0 - tail])
    return (float(low), float(high))


def pinball_loss(y: np.ndarray, q_pred: np.ndarray, *, quantile: float) -> float:
    """Mean pinball (quantile) loss of ``q_pred`` as the ``quantile`` of ``y``."""
    diff = np.asarray(y) - np.asarray(q_pred)
    return float(np.mean(np.maximum(quantile * diff, (quantile - 1.0) * diff)))


def interval_pinball(y: np.ndarray, lower: np.ndarray, upper: np.ndarray, *, level: float) -> float:
    """Mean pinball loss of a central ``level`` band: the average over its two quantiles."""
    tail = (1.0 - level) / 2.0
    return 0.5 * (pinball_loss(y, lower, quantile=tail) + pinball_loss(y, upper, quantile=1.0 - tail))


def score_breakdown(prediction: Mapping[str, Any], y: np.ndarray, *, meta: Mapping[str, np.ndarray]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """RMSE (and band coverage) per rating and, on synthetic data, per regime.

    Returns
    -------
    dict
        ``{"rating": {"AAA": {"n", "rmse"[, "coverage"]}, ...}, "regime": {"calm": ..., ...}}``; a
        group without rows is left out, and ``regime`` is empty without ``oracle_regime``.
    """
    y = np.asarray(y, dtype=np.float64)
    sq = (y - np.asarray(prediction["mean"], dtype=np.float64)) ** 2
    inside = None
    if "lower" in prediction and "upper" in prediction:
        inside = ((y >= np.asarray(prediction["lower"])) & (y <= np.asarray(prediction["upper"]))).astype(np.float64)
    out: Dict[str, Dict[str, Dict[str, float]]] = {"rating": {}, "regime": {}}
    for key, column, names in (("rating", "rating", RATINGS), ("regime", "oracle_regime", REGIMES)):
        if column not in meta:
            continue
        codes = np.asarray(meta[column], dtype=np.int64)
        size = max(len(names), int(codes.max()) + 1) if len(codes) else len(names)
        count = np.bincount(codes, minlength=size)
        with np.errstate(invalid="ignore", divide="ignore"):
            rmse = np.sqrt(np.bincount(codes, weights=sq, minlength=size) / count)
            coverage = None if inside is None else np.bincount(codes, weights=inside, minlength=size) / count
        for code in np.flatnonzero(count):
            label = names[code] if code < len(names) else str(code)
            entry = {"n": int(count[code]), "rmse": float(rmse[code])}
            if coverage is not None:
                entry["coverage"] = float(coverage[code])
            out[key][label] = entry
    return out


# ----------------------------------------------------------------------------- outputs


def leaderboard_columns(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    """The documented columns, then the optional ones that any row has."""
    return list(COLUMNS) + [c for c in OPTIONAL_COLUMNS if any(c in row for row in rows)]


def leaderboard_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The leaderboard as a markdown table (4 decimals; an empty cell where a column does not apply)."""
    columns = leaderboard_columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---:" if c != "model" else "---" for c in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c), decimals=4) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any, *, decimals: int) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.{decimals}f}"
    return str(value)


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV with full-precision floats; NaN and absent values are empty fields."""
    columns = leaderboard_columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c)
            if value is None or (isinstance(value, (float, np.floating)) and not np.isfinite(value)):
                cells.append("")
            elif isinstance(value, (float, np.floating)):
                cells.append(repr(float(value)))
            else:
                cells.append(str(value))
        writer.writerow(cells)
    return buffer.getvalue()


def write_outputs(artifact: Mapping[str, Any], run_dir) -> Dict[str, Path]:
    """Write ``leaderboard.csv``, ``leaderboard.md`` and the plots under ``plots/`` into ``run_dir``.

    Every file is written whole through a temporary file and ``os.replace``.

    Returns
    -------
    dict
        ``{file label: path}`` of what was written.
    """
    run_dir = Path(run_dir)
    rows = [dict(row) for row in artifact["leaderboard"]]
    paths = {"leaderboard_csv": run_dir / "leaderboard.csv", "leaderboard_md": run_dir / "leaderboard.md"}
    atomic_write_text(paths["leaderboard_csv"], _csv_text(rows))
    atomic_write_text(paths["leaderboard_md"], leaderboard_markdown(rows))
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    paths["predicted_vs_actual"] = plot_predicted_vs_actual(artifact, plots / "predicted_vs_actual.png")
    paths["residual_distribution"] = plot_residual_distribution(artifact, plots / "residual_distribution.png")
    paths["rmse_ci"] = plot_rmse_ci(rows, plots / "rmse_ci.png")
    return paths


def _best_models(artifact: Mapping[str, Any], k: int = N_PLOTTED) -> List[str]:
    """The ``k`` best trained models whose sampled predictions the artifact holds."""
    held = artifact["samples"]["predictions"]
    return [row["model"] for row in artifact["leaderboard"] if row["model"] not in REFERENCES and row["model"] in held][:k]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Save ``fig`` as PNG through a temporary file in the same folder, then ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=110)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _pyplot().close(fig)
    return path


def plot_predicted_vs_actual(artifact: Mapping[str, Any], path: Path) -> Path:
    """Predicted against actual residual for the best models (a seeded subsample of points)."""
    plt = _pyplot()
    names = _best_models(artifact)
    y = np.asarray(artifact["samples"]["y"])
    shown = np.arange(len(y))
    if len(y) > MAX_SCATTER_POINTS:
        shown = np.sort(np.random.default_rng(artifact["config"]["seed"]).choice(len(y), MAX_SCATTER_POINTS, replace=False))
    rmse = {row["model"]: row["rmse"] for row in artifact["leaderboard"]}
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4.6 * max(len(names), 1), 4.4), squeeze=False)
    limits = np.quantile(y, [0.005, 0.995]) if len(y) else np.array([-1.0, 1.0])
    for ax, name in zip(axes[0], names):
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
    fig.tight_layout()
    return _save(fig, path)


def plot_residual_distribution(artifact: Mapping[str, Any], path: Path) -> Path:
    """Histogram of the actual residual against the best models' predicted residuals (shared bins)."""
    plt = _pyplot()
    y = np.asarray(artifact["samples"]["y"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    lo, hi = np.quantile(y, [0.005, 0.995]) if len(y) else (-1.0, 1.0)
    bins = np.linspace(lo, hi, int(np.clip(np.sqrt(len(y)), 10, 60)) + 1)
    ax.hist(y, bins=bins, density=True, color="lightgray", edgecolor="gray", label="actual")
    for name in _best_models(artifact):
        pred = np.asarray(artifact["samples"]["predictions"][name])
        ax.hist(pred, bins=bins, density=True, histtype="step", lw=1.6, label=f"{name} predicted")
    ax.axvline(0.0, color="black", lw=1, ls=":", label="DCF alone (0)")
    ax.set_xlabel("residual: market clean price - DCF fair value (per 100; central 99% of actual)")
    ax.set_ylabel("density")
    ax.set_title("Residual distribution on the evaluated test rows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_rmse_ci(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Test RMSE per model with its bootstrap interval, best at the top; references in gray."""
    plt = _pyplot()
    rows = list(rows)[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    positions = np.arange(len(rows))
    rmse = np.array([row["rmse"] for row in rows], dtype=np.float64)
    low = np.array([row.get("rmse_ci_low", np.nan) for row in rows], dtype=np.float64)
    high = np.array([row.get("rmse_ci_high", np.nan) for row in rows], dtype=np.float64)
    errors = np.nan_to_num(np.vstack([rmse - low, high - rmse]), nan=0.0)
    colors = ["tab:gray" if row["model"] in REFERENCES else "tab:blue" for row in rows]
    ax.barh(positions, rmse, xerr=errors, color=colors, alpha=0.8, capsize=3)
    ax.set_yticks(positions, [row["model"] for row in rows])
    ax.set_xlabel("test RMSE of the residual (per 100) with bootstrap interval")
    ax.set_title("RMSE per model (gray: DCF baseline and oracle)")
    fig.tight_layout()
    return _save(fig, path)

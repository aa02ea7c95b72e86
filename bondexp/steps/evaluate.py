"""The evaluate step: every model scored on the same sampled test rows, against the DCF and the oracle.

The leaderboard answers "how much closer to the market price does each model get than the DCF fair
value alone?". The target is the residual (market clean price minus DCF fair clean price, per 100),
so the DCF alone predicts a residual of 0 and ``dcf_baseline`` is that constant. On synthetic data
``oracle`` predicts with the generator's own expectation (``oracle_prediction``): no model can
expect to beat it, and ``oracle_gap_pct`` says how much of the way from DCF to oracle is left.

Validation chooses, test only reports: ``best_model`` is the trained model with the lowest
validation RMSE (``val_rmse``, the column beside the test scores); the leaderboard is sorted by
test RMSE for reading, and the test split never picks anything.

Every model is scored on the same rows with the same bootstrap resamples, so the RMSE intervals
of two models are comparable. The resamples are of rows; residuals of one month move together,
so the intervals are a lower bound on the uncertainty, not an exact one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from bondexp.artifacts import BASELINE, ORACLE, REFERENCES, ModelArtifact, StepOutput, model_artifacts
from bondexp.bondtable import RATINGS
from bondexp.errors import ConfigError, DataValidationError, check_keys
from bondexp.features import Dataset, dataset_for
from bondexp.metrics import prediction_scores
from bondexp.metrics import rmse as rmse_of
from bondexp.stats import bootstrap_rmse_ci
from bondexp.steps.leaderboard import COLUMNS, OPTIONAL_COLUMNS, leaderboard_files

__all__ = ["COLUMNS", "choose_best", "evaluate", "evaluate_models", "sample_rows", "score_breakdown", "score_models"]

#: Names of the synthetic market's regime codes (``oracle_regime``).
REGIMES = ("calm", "stress", "crisis")
#: Keys of the step's config slice.
CONFIG_KEYS = ("sample_pct", "n_bootstrap", "confidence", "seed")


# ----------------------------------------------------------------------------- the step


def evaluate(config: dict[str, Any], inputs: dict[str, Any], ctx) -> StepOutput:
    """The step: the leaderboard of every model in ``inputs`` on the sampled test split.

    Parameters
    ----------
    config : dict
        ``sample_pct``, ``n_bootstrap``, ``confidence`` and ``seed``.
    inputs : dict
        Step artifacts; the :class:`ModelArtifact` ones are the models scored.
    ctx : StepContext
        ``shared`` locates the run's dataset.

    Returns
    -------
    StepOutput
        The artifact of :func:`evaluate_models` and its files (:func:`leaderboard_files`).

    Raises
    ------
    ConfigError
        An unknown config key, a value out of range, or no model among ``inputs``.
    DataValidationError
        A model's test predictions do not cover the test split or are not finite.
    """
    check_keys("eval", sorted(config), CONFIG_KEYS)  # validate_config checks them before any work; this for a direct call
    models = {artifact.name: artifact for artifact in model_artifacts(inputs).values()}  # tune's is <target>_tuned
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
        "evaluate: %d of %d test rows, validation chose %s (validation RMSE %.4f; test RMSE %.4f, %+.1f%% against the DCF)",
        m["n_evaluated"],
        m["n_test"],
        m["best_model"],
        m["best_val_rmse"],
        m["best_rmse"],
        m["best_improvement_pct"],
    )
    return StepOutput(artifact, leaderboard_files(artifact))


def evaluate_models(
    dataset: Dataset,
    models: Mapping[str, ModelArtifact],
    *,
    sample_pct: float = 100.0,
    n_bootstrap: int = 500,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Score ``models`` (by model name) and the references on the same sampled test rows.

    Returns
    -------
    dict
        ``leaderboard`` (rows of :func:`score_models` plus ``val_rmse``, sorted by test RMSE), ``breakdown``
        ({model: {"rating": ..., "regime": ...}}), ``sample_rows`` (positions in the test split),
        ``samples`` (the sampled target and each model's sampled mean prediction, for the plots),
        ``validation_rmse`` and ``groups`` ({model: value}) from the model artifacts, ``config``
        and flat ``metrics``: ``best_model`` is validation's choice (lowest ``val_rmse``), and
        ``best_val_rmse``, ``best_rmse``, ``best_improvement_pct`` are its scores.

    Raises
    ------
    ConfigError
        No model, a model named like a reference row, or an option out of range.
    DataValidationError
        A model's test predictions do not cover the test split or are not finite, or no model
        reported a finite validation RMSE to choose by.
    """
    _check_options(models, sample_pct=sample_pct, n_bootstrap=n_bootstrap, confidence=confidence)
    n_test = len(dataset.splits["test"])
    rows = sample_rows(dataset, pct=sample_pct, seed=seed)
    y = dataset.target("test")[rows]
    meta = {name: dataset.meta_of("test", name)[rows] for name in dataset.meta}
    candidates: dict[str, dict[str, Any]] = {}
    for name, artifact in models.items():
        candidates[name] = _sampled(name, artifact.predictions["test"], rows, n_test=n_test)
    candidates[BASELINE] = {"mean": np.zeros(len(rows))}
    if dataset.has_oracle:
        candidates[ORACLE] = {"mean": np.asarray(meta["oracle_prediction"], dtype=np.float64)}

    val_rmse = {name: _val_rmse(artifact) for name, artifact in models.items()}
    val_rmse.update(_reference_val_rmse(dataset))
    scored = score_models(candidates, y, meta=meta, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    leaderboard = [{**row, "val_rmse": val_rmse.get(row["model"], np.nan)} for row in scored]
    breakdown = {name: score_breakdown(prediction, y, meta=meta) for name, prediction in candidates.items()}
    leaderboard.sort(key=lambda row: row["rmse"])
    best = choose_best(leaderboard)
    metrics: dict[str, Any] = {
        "best_model": best["model"],
        "best_val_rmse": best["val_rmse"],
        "best_rmse": best["rmse"],
        "best_improvement_pct": best["improvement_pct"],
        "dcf_rmse": next(row["rmse"] for row in leaderboard if row["model"] == BASELINE),
        "n_evaluated": int(len(rows)),
        "n_test": int(n_test),
    }
    metrics["n_models"] = sum(row["model"] not in REFERENCES for row in leaderboard)
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
        "validation_rmse": {name: val_rmse[name] for name in models},
        "groups": {name: artifact.group for name, artifact in models.items()},
        "config": {"sample_pct": sample_pct, "n_bootstrap": n_bootstrap, "confidence": confidence, "seed": seed},
        "metrics": metrics,
    }


def _check_options(models: Mapping[str, ModelArtifact], *, sample_pct: float, n_bootstrap: int, confidence: float) -> None:
    """Raise :class:`ConfigError` naming the key for no model, a reserved model name or an option out of range."""
    if not models:
        raise ConfigError("The evaluate step needs at least one model step; its inputs hold no model artifact.")
    if not 0 < sample_pct <= 100:
        raise ConfigError(f"The 'eval.sample_pct' config key must be a percentage in (0, 100]. Got {sample_pct!r} instead.")
    if n_bootstrap < 1:
        raise ConfigError(f"The 'eval.n_bootstrap' config key must be at least 1. Got {n_bootstrap!r} instead.")
    if not 0 < confidence < 1:
        raise ConfigError(f"The 'eval.confidence' config key must be in (0, 1). Got {confidence!r} instead.")
    taken = sorted(set(models) & set(REFERENCES))
    if taken:
        raise ConfigError(
            f"Model names must differ from the leaderboard's reference rows {list(REFERENCES)}. Got {taken}; rename the model."
        )


def _sampled(name: str, prediction: Mapping[str, Any], rows: np.ndarray, *, n_test: int) -> dict[str, Any]:
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


def _val_rmse(artifact: ModelArtifact) -> float:
    """A model's validation RMSE as its step reported it (NaN when it reported none)."""
    return float(artifact.metrics.get("val_rmse", np.nan))


def _reference_val_rmse(dataset: Dataset) -> dict[str, float]:
    """Validation RMSE of the reference rows: the DCF alone (residual 0) and, on synthetic data, the oracle."""
    y = dataset.target("validation")
    out = {BASELINE: float(np.sqrt(np.mean(y**2)))}
    if dataset.has_oracle:
        oracle = np.asarray(dataset.meta_of("validation", "oracle_prediction"), dtype=np.float64)
        out[ORACLE] = float(np.sqrt(np.mean((y - oracle) ** 2)))
    return out


def choose_best(rows: Iterable[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The trained model's row with the lowest ``val_rmse``: validation chooses, the test split never does.

    Raises
    ------
    DataValidationError
        If no trained model's row has a finite ``val_rmse``.
    """
    rows = list(rows)
    scored = [r for r in rows if r["model"] not in REFERENCES and np.isfinite(r.get("val_rmse", np.nan))]
    if not scored:
        raise DataValidationError(
            "The evaluate step chooses the best model by validation RMSE, but no model step reported a finite "
            f"'val_rmse' in its metrics (models: {[r['model'] for r in rows if r['model'] not in REFERENCES]})."
        )
    return min(scored, key=lambda r: r["val_rmse"])


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


def score_models(
    predictions: Mapping[str, Mapping[str, Any]],
    y: np.ndarray,
    *,
    meta: Mapping[str, np.ndarray],
    n_bootstrap: int,
    confidence: float,
    seed: int,
) -> list[dict[str, Any]]:
    """One leaderboard row per model of ``predictions`` (by name): its errors against the residuals ``y``.

    ``improvement_pct`` is ``100 * (1 - rmse / rmse_dcf)``, where the DCF alone predicts a residual
    of 0 (``rmse_dcf`` is the root mean square of ``y``): the share of the DCF's price error the
    model removes. ``oracle_gap_pct`` (when ``meta`` has ``oracle_prediction``) is
    ``100 * (rmse - rmse_oracle) / (rmse_dcf - rmse_oracle)``, the share of the oracle's reduction
    of the DCF's RMSE the model has not achieved: 0 is as good as the oracle, 100 no better than
    the DCF, below 0 luckier than the oracle on these rows. The RMSE interval is the percentile
    bootstrap at ``confidence`` over ``n_bootstrap`` row resamples drawn once from ``seed`` and
    shared by every model. Interval predictions (``lower``, ``upper``, ``level``) add ``level``,
    ``coverage`` and ``pinball`` (mean pinball loss of the band's two quantiles); a ``std`` adds
    ``nll`` (mean Gaussian negative log-likelihood).

    Returns
    -------
    list of dict
        In the order of ``predictions``: ``model, n, rmse, rmse_ci_low, rmse_ci_high, mae, r2,
        improvement_pct`` and, as they apply, ``oracle_gap_pct, level, coverage, pinball, nll``.

    Raises
    ------
    DataValidationError
        A prediction array does not match ``y`` in length, holds a non-finite value, or a
        ``std`` is not positive.
    """
    y = np.asarray(y, dtype=np.float64)
    rmse_dcf = rmse_of(y, np.zeros_like(y))
    rmse_oracle = rmse_of(y, meta["oracle_prediction"]) if "oracle_prediction" in meta else None
    checked_by_name = {name: _checked_prediction(name, prediction, len(y)) for name, prediction in predictions.items()}
    sq_errors = np.array([(y - checked["mean"]) ** 2 for checked in checked_by_name.values()]).reshape(len(checked_by_name), len(y))
    lows, highs = bootstrap_rmse_ci(sq_errors, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    rows = []
    for (name, checked), low, high in zip(checked_by_name.items(), lows, highs, strict=True):
        scores = prediction_scores(y, checked)
        rmse = scores["rmse"]
        row: dict[str, Any] = {"model": name, "n": int(len(y)), "rmse": rmse, "rmse_ci_low": float(low), "rmse_ci_high": float(high)}
        row.update(mae=scores["mae"], r2=scores["r2"], improvement_pct=100.0 * (1.0 - rmse / rmse_dcf) if rmse_dcf > 0 else np.nan)
        if rmse_oracle is not None:
            reach = rmse_dcf - rmse_oracle
            row["oracle_gap_pct"] = 100.0 * (rmse - rmse_oracle) / reach if reach > 0 else np.nan
        row.update({key: scores[key] for key in OPTIONAL_COLUMNS if key in scores})
        rows.append(row)
    return rows


def _checked_prediction(name: str, prediction: Mapping[str, Any], n: int) -> dict[str, Any]:
    """The prediction's arrays as checked float64 (see :func:`_checked`), its ``level`` as it is."""
    keys = [key for key in ("mean", "lower", "upper", "std") if key in prediction]
    checked: dict[str, Any] = {key: _checked(name, key, prediction[key], n) for key in keys}
    if "std" in checked and np.any(checked["std"] <= 0):
        raise DataValidationError(
            f"The predicted 'std' of model '{name}' must be positive. Got {int(np.sum(checked['std'] <= 0))} value(s) <= 0."
        )
    if "level" in prediction:
        checked["level"] = prediction["level"]
    return checked


def _checked(name: str, key: str, values: Any, n: int) -> np.ndarray:
    """``values`` as float64 after checking it has ``n`` finite entries (a silent NaN would rank anywhere)."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (n,):
        raise DataValidationError(
            f"The prediction '{key}' of model '{name}' must hold one value per evaluated row ({n}). Got shape {values.shape} instead."
        )
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataValidationError(
            f"The prediction '{key}' of model '{name}' must be finite. Got {int(bad.sum())} non-finite value(s), "
            f"the first at evaluated row {int(np.flatnonzero(bad)[0])}."
        )
    return values


def score_breakdown(
    prediction: Mapping[str, Any], y: np.ndarray, *, meta: Mapping[str, np.ndarray]
) -> dict[str, dict[str, dict[str, float]]]:
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
    out: dict[str, dict[str, dict[str, float]]] = {"rating": {}, "regime": {}}
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

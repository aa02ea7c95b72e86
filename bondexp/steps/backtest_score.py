"""Scores the walk-forward backtest: RMSE per (model, origin) and over all origins, with a month-block bootstrap.

The interval of a model's overall RMSE resamples the scored (origin, month) blocks as wholes: the
bonds of one month share that month's curve, spread and sector shocks, so they are not independent
draws. Every model (and the DCF baseline and the oracle) is scored on the same draws, so the
intervals compare. The (model, origin) refits come from :func:`bondexp.steps.backtest.fit_origin`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bondexp.errors import DataValidationError

#: Rows of backtest.csv that are references, not trained models.
BASELINE, ORACLE = "dcf_baseline", "oracle"
#: The ``origin`` of a model's row over the whole backtest.
OVERALL = "all"


@dataclass(frozen=True)
class _MonthBlocks:
    """The scored rows of every origin cut into calendar-month blocks, and the bootstrap's draws of them."""

    index: dict[str, np.ndarray]  # origin -> block number of each scored row
    n_months: dict[str, int]  # origin -> months it scores
    count: np.ndarray  # scored rows in each block (a row scored from two origins counts twice)
    draws: np.ndarray  # (n_bootstrap, n_blocks) block numbers drawn with replacement

    @property
    def n_blocks(self) -> int:
        return len(self.count)


def score_backtest(
    fits: Sequence[Mapping[str, Any]],
    *,
    y: np.ndarray,
    meta: Mapping[str, np.ndarray],
    n_bootstrap: int,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    """RMSE per model and origin, and over the whole backtest with a month-block bootstrap interval.

    Parameters
    ----------
    fits : sequence of dict
        (model, origin) artifacts of :func:`bondexp.steps.backtest.fit_origin`: ``name``, ``origin``,
        ``rows['scored']``, ``predictions['mean']`` and ``metrics['n_train']``.
    y : ndarray
        The target of every dataset row (``rows['scored']`` index it).
    meta : mapping
        ``obs_date`` of every row and, when the data has it, ``oracle_prediction``.
    n_bootstrap, confidence, seed
        The interval: ``n_bootstrap`` draws of the scored calendar months with replacement,
        the same draws for every model, percentile interval at ``confidence``.

    Returns
    -------
    dict
        ``rows`` (per model and origin, then per model over ``all`` origins, lowest RMSE first;
        ``dcf_baseline`` and ``oracle`` included), ``origins``, ``models``, ``config`` and ``metrics``.

    Raises
    ------
    DataValidationError
        No fit, models that do not share their origins, or two fits of one origin scoring different rows.
    """
    by_model, origins = _refits_by_model(fits)
    scored = _shared_scored_rows(by_model, origins)
    predictions = {
        name: {o: np.asarray(per[o]["predictions"]["mean"], dtype=np.float64) for o in origins} for name, per in by_model.items()
    }
    predictions[BASELINE] = {o: np.zeros(len(scored[o])) for o in origins}
    if "oracle_prediction" in meta:
        predictions[ORACLE] = {o: np.asarray(meta["oracle_prediction"][scored[o]], dtype=np.float64) for o in origins}
    n_train = {name: {o: per[o]["metrics"]["n_train"] for o in origins} for name, per in by_model.items()}
    blocks = _month_blocks(meta["obs_date"], scored, origins, n_bootstrap=n_bootstrap, seed=seed)

    rows: list[dict[str, Any]] = []
    overall: list[dict[str, Any]] = []
    for name, per_origin in predictions.items():
        errors = {o: y[scored[o]] - per_origin[o] for o in origins}
        rows += [
            {
                "model": name,
                "origin": o,
                "n": int(len(errors[o])),
                "n_months": blocks.n_months[o],
                "n_train": n_train.get(name, {}).get(o),
                "rmse": float(np.sqrt(np.mean(errors[o] ** 2))),
            }
            for o in origins
        ]
        overall.append(_overall_row(name, errors, blocks, confidence=confidence))
    rows += sorted(overall, key=lambda row: row["rmse"])
    _add_relative_scores(rows)
    models = sorted(by_model)
    return {
        "rows": rows,
        "origins": origins,
        "models": models,
        "config": {"n_bootstrap": n_bootstrap, "confidence": confidence, "seed": seed},
        "metrics": {
            "n_models": len(models),
            "n_origins": len(origins),
            "n_scored": int(blocks.count.sum()),
            "n_scored_months": blocks.n_blocks,
        },
    }


def _refits_by_model(fits: Sequence[Mapping[str, Any]]) -> tuple[dict[str, dict[str, Mapping[str, Any]]], list[str]]:
    """The fits as model -> origin -> fit, and the origins; raise unless every model has every origin."""
    if not fits:
        raise DataValidationError("The backtest step needs (model, origin) steps among its inputs; it got none.")
    by_model: dict[str, dict[str, Mapping[str, Any]]] = {}
    for fit in fits:
        by_model.setdefault(fit["name"], {})[fit["origin"]] = fit
    origins = sorted({o for per in by_model.values() for o in per})
    missing = {name: sorted(set(origins) - set(per)) for name, per in by_model.items() if set(per) != set(origins)}
    if missing:
        raise DataValidationError(f"Every backtest model must be refit at every origin; missing (model: origins): {missing}.")
    return by_model, origins


def _shared_scored_rows(by_model: Mapping[str, Mapping[str, Mapping[str, Any]]], origins: Sequence[str]) -> dict[str, np.ndarray]:
    """Origin -> the dataset rows every model scored there; raise if two models scored different rows."""
    scored = {}
    for origin in origins:
        row_sets = [np.asarray(per[origin]["rows"]["scored"]) for per in by_model.values()]
        if any(not np.array_equal(rows, row_sets[0]) for rows in row_sets[1:]):
            raise DataValidationError(f"The backtest fits at origin {origin} scored different rows; they must share them.")
        scored[origin] = row_sets[0]
    return scored


def _month_blocks(
    obs_date: np.ndarray, scored: Mapping[str, np.ndarray], origins: Sequence[str], *, n_bootstrap: int, seed: int
) -> _MonthBlocks:
    """Number the calendar months of the scored rows, earliest first, and draw the bootstrap's resamples of them.

    A block is a calendar month, whichever origins score it: listed origins closer than ``horizon``
    both score the months they share, and as one block per (origin, month) a shared month was
    resampled as two independent ones (its rows share one curve, spread and sector shocks), which
    narrowed the interval, and ``n_months`` counted it twice.
    """
    months = {origin: np.asarray(obs_date[scored[origin]], dtype="datetime64[M]") for origin in origins}
    calendar = np.unique(np.concatenate([months[o] for o in origins]))
    index = {origin: np.searchsorted(calendar, months[origin]) for origin in origins}
    n_months = {origin: len(np.unique(months[origin])) for origin in origins}
    count = np.bincount(np.concatenate([index[o] for o in origins]), minlength=len(calendar)).astype(np.float64)
    draws = np.random.default_rng(seed).integers(0, len(count), size=(n_bootstrap, len(count)))
    return _MonthBlocks(index=index, n_months=n_months, count=count, draws=draws)


def _overall_row(name: str, errors: Mapping[str, np.ndarray], blocks: _MonthBlocks, *, confidence: float) -> dict[str, Any]:
    """A model's row over every origin: pooled RMSE and its percentile interval over the block draws."""
    sse = np.zeros(blocks.n_blocks)
    for origin, err in errors.items():
        sse += np.bincount(blocks.index[origin], weights=err**2, minlength=blocks.n_blocks)
    boot = np.sqrt(sse[blocks.draws].sum(axis=1) / blocks.count[blocks.draws].sum(axis=1))
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(boot, [tail, 100.0 - tail])
    n = blocks.count.sum()
    return {
        "model": name,
        "origin": OVERALL,
        "n": int(n),
        "n_months": blocks.n_blocks,
        "rmse": float(np.sqrt(sse.sum() / n)),
        "rmse_ci_low": float(low),
        "rmse_ci_high": float(high),
    }


def _add_relative_scores(rows: Sequence[dict[str, Any]]) -> None:
    """Set ``improvement_pct`` (against the DCF) and ``oracle_gap_pct`` on every row, origin by origin, in place."""
    dcf = {row["origin"]: row["rmse"] for row in rows if row["model"] == BASELINE}
    oracle = {row["origin"]: row["rmse"] for row in rows if row["model"] == ORACLE}
    for row in rows:
        reference = dcf[row["origin"]]
        row["improvement_pct"] = 100.0 * (1.0 - row["rmse"] / reference) if reference > 0 else None
        if oracle and reference > oracle[row["origin"]]:
            row["oracle_gap_pct"] = 100.0 * (row["rmse"] - oracle[row["origin"]]) / (reference - oracle[row["origin"]])

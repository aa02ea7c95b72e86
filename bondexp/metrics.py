"""How good a prediction is: every score bondexp reports, written once.

The model step (validation scores), the evaluate step (the leaderboard) and the tuning step (its
objective) all score with these functions, so a model's ``val_rmse`` and its leaderboard
``rmse`` are the same formula on different rows. Inputs are array-likes of equal length; the
callers check shapes and finiteness where they can name the model and the key at fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def rmse(y: Any, prediction: Any) -> float:
    """Root mean squared error; NaN for no rows."""
    y = np.asarray(y, dtype=np.float64)
    if not len(y):
        return float("nan")
    return float(np.sqrt(np.mean((y - np.asarray(prediction, dtype=np.float64)) ** 2)))


def mae(y: Any, prediction: Any) -> float:
    """Mean absolute error; NaN for no rows."""
    y = np.asarray(y, dtype=np.float64)
    if not len(y):
        return float("nan")
    return float(np.mean(np.abs(y - np.asarray(prediction, dtype=np.float64))))


def r2(y: Any, prediction: Any) -> float:
    """Coefficient of determination ``1 - SSE / SST``; NaN when ``y`` is constant or empty."""
    y = np.asarray(y, dtype=np.float64)
    sst = float(np.sum((y - y.mean()) ** 2)) if len(y) else 0.0
    if not sst > 0:
        return float("nan")
    return 1.0 - float(np.sum((y - np.asarray(prediction, dtype=np.float64)) ** 2)) / sst


def pinball_loss(y: Any, q_pred: Any, *, quantile: float) -> float:
    """Mean pinball (quantile) loss of ``q_pred`` as the ``quantile`` of ``y``."""
    diff = np.asarray(y) - np.asarray(q_pred)
    return float(np.mean(np.maximum(quantile * diff, (quantile - 1.0) * diff)))


def interval_pinball(y: Any, lower: Any, upper: Any, *, level: float) -> float:
    """Mean pinball loss of a central ``level`` band: the average over its two quantiles."""
    tail = (1.0 - level) / 2.0
    return 0.5 * (pinball_loss(y, lower, quantile=tail) + pinball_loss(y, upper, quantile=1.0 - tail))


def coverage(y: Any, lower: Any, upper: Any) -> float:
    """Share of ``y`` inside the closed band ``[lower, upper]``."""
    y = np.asarray(y)
    return float(np.mean((y >= np.asarray(lower)) & (y <= np.asarray(upper))))


def gaussian_nll(y: Any, mean: Any, std: Any) -> float:
    """Mean negative log-likelihood of ``y`` under independent normals ``N(mean, std**2)``."""
    std = np.asarray(std, dtype=np.float64)
    sq = (np.asarray(y, dtype=np.float64) - np.asarray(mean, dtype=np.float64)) ** 2
    return float(np.mean(0.5 * np.log(2 * np.pi * std**2) + sq / (2 * std**2)))


def prediction_scores(y: Any, prediction: Mapping[str, Any]) -> dict[str, float]:
    """The scores a prediction supports, from what it holds.

    ``prediction`` holds ``mean`` and may hold ``lower``, ``upper`` and ``level`` (a central
    band, ``level`` 0.9 if absent) and ``std`` (a Gaussian spread).

    Returns
    -------
    dict
        ``rmse``, ``mae``, ``r2``; with a band ``level``, ``coverage`` and ``pinball``
        (:func:`interval_pinball`); with a std ``nll`` (:func:`gaussian_nll`).
    """
    mean = prediction["mean"]
    out = {"rmse": rmse(y, mean), "mae": mae(y, mean), "r2": r2(y, mean)}
    if "lower" in prediction and "upper" in prediction:
        level = float(prediction.get("level", 0.9))
        out["level"] = level
        out["coverage"] = coverage(y, prediction["lower"], prediction["upper"])
        out["pinball"] = interval_pinball(y, prediction["lower"], prediction["upper"], level=level)
    if "std" in prediction:
        out["nll"] = gaussian_nll(y, mean, prediction["std"])
    return out

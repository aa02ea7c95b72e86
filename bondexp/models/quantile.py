"""Tail risk: conformalized quantile regression (CQR) of the residual, VaR and expected shortfall per bond.

Quantile boosting learns where the residual's 5% and 95% quantiles sit for each bond and month,
but its in-sample quantiles are too narrow. Conformalizing on the validation split (later months,
never trained on) widens each tail by the validation quantile of its own exceedances, which gives
a finite-sample coverage guarantee when validation and test are exchangeable, and calibrates each
tail separately so the 5% quantile is a usable VaR.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import chi2
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.utils._param_validation import Interval, RealNotInt
from sklearn.utils.validation import check_is_fitted

from bondexp.data.split import month_holdout, month_labels
from bondexp.models.base import (
    CompositeRegressor,
    booster_constraints,
    fit_time_ordered,
    row_months,
)


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The split-conformal quantile of ``scores``: the ceil((n + 1) level)-th smallest (max if beyond n)."""
    n = len(scores)
    k = min(int(np.ceil((n + 1) * level)), n)
    return float(np.partition(scores, k - 1)[k - 1])


def kupiec_pof(exceedances: int, n: int, p: float) -> dict[str, float]:
    """Kupiec's proportion-of-failures likelihood-ratio test of an exceedance rate ``p``.

    Returns
    -------
    dict
        ``rate`` (observed), ``lr`` (the statistic, chi-square with 1 degree of freedom under the
        null) and ``pvalue``. It assumes independent exceedances; bonds of one month share
        shocks, so read a small p-value as a hint, not a verdict.
    """
    x, rate = exceedances, exceedances / n
    log_null = (n - x) * np.log1p(-p) + x * np.log(p)
    log_alt = (n - x) * np.log1p(-rate) if x < n else 0.0
    log_alt += x * np.log(rate) if x > 0 else 0.0
    lr = max(-2.0 * (log_null - log_alt), 0.0)
    return {"rate": float(rate), "lr": float(lr), "pvalue": float(chi2.sf(lr, df=1))}


class ConformalQuantileRegressor(CompositeRegressor):
    """5%/95% quantile boosting of the residual, conformalized on validation, with VaR and ES.

    Parameters
    ----------
    alpha : float
        Miscoverage of the central band: 0.1 gives the 5%-95% band (VaR at 95%).
    max_iter, learning_rate, min_samples_leaf, max_leaf_nodes
        The three HistGradientBoosting members (lower and upper quantile, and the mean).
    early_stopping : dict, optional
        ``enabled``, ``patience``, ``validation_fraction``, ``tol``, for every member.
    random_state : int, optional

    Attributes
    ----------
    members_ : dict
        ``lower``, ``upper`` (quantile loss) and ``mean`` (squared error) boosters.
    adjustment_ : dict
        Price points each tail was widened by on validation (negative: narrowed).
    tail_factor_ : float
        Mean shortfall beyond the lower quantile on validation, in units of each bond's
        mean-to-lower distance; ES = VaR + tail_factor x that distance.
    interval_level_ : float
        ``1 - alpha``.
    metrics_ : dict
        Validation coverage before calibration and a Kupiec test of the 5% VaR, out of sample
        (each half of the validation months calibrated on the other half).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> X = pd.DataFrame({"a": rng.normal(size=600)})
    >>> y = X["a"].to_numpy() + rng.normal(size=600)
    >>> model = ConformalQuantileRegressor(max_iter=30, random_state=0).fit(X[:400], y[:400])
    >>> lo, hi = model.calibrate(X[400:], y[400:]).predict_interval(X[400:])
    >>> bool(np.all(lo < hi))
    True
    """

    _parameter_constraints: dict = {
        "alpha": [Interval(RealNotInt, 0, 1, closed="neither")],
        **booster_constraints(),
        "early_stopping": [dict, None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        alpha: float = 0.1,
        max_iter: int = 300,
        learning_rate: float = 0.05,
        min_samples_leaf: int = 100,
        max_leaf_nodes: int = 15,
        early_stopping: dict[str, Any] | None = None,
        random_state: int | None = None,
    ):
        self.alpha = alpha
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.min_samples_leaf = min_samples_leaf
        self.max_leaf_nodes = max_leaf_nodes
        self.early_stopping = early_stopping
        self.random_state = random_state

    def _booster(self, **loss) -> HistGradientBoostingRegressor:
        return self._new_booster(
            max_iter=self.max_iter,
            learning_rate=self.learning_rate,
            min_samples_leaf=self.min_samples_leaf,
            max_leaf_nodes=self.max_leaf_nodes,
            **loss,
        )

    def fit(self, X, y, groups=None):
        """Fit the lower and upper quantile boosters and the mean booster (uncalibrated until :meth:`calibrate`).

        Parameters
        ----------
        groups : array-like, optional
            Each row's month: each booster stops early on the latest whole months (see
            :mod:`bondexp.models.base` for None).

        Returns
        -------
        self
        """
        X, y, months = self._fit_data(X, y, groups)
        tail = self.alpha / 2.0
        self.members_ = {
            "lower": fit_time_ordered(self._booster(loss="quantile", quantile=tail), X, y, groups=months),
            "upper": fit_time_ordered(self._booster(loss="quantile", quantile=1.0 - tail), X, y, groups=months),
            "mean": fit_time_ordered(self._booster(), X, y, groups=months),
        }
        self.n_iter_ = np.array([m.n_iter_ for m in self.members_.values()])
        self.interval_level_ = 1.0 - self.alpha
        self.adjustment_ = {"lower": 0.0, "upper": 0.0}
        self.tail_factor_ = 1.0
        self.metrics_, self.info_ = {}, {}
        return self

    def _raw(self, X):
        X = self._frame(X)
        return {name: m.predict(X) for name, m in self.members_.items()}

    def _adjustments(self, raw: dict[str, np.ndarray], y: np.ndarray) -> dict[str, float]:
        """Per-tail CQR widening: the conformal quantile of each tail's exceedance at level 1 - alpha/2."""
        level = 1.0 - self.alpha / 2.0
        return {
            "lower": conformal_quantile(raw["lower"] - y, level),
            "upper": conformal_quantile(y - raw["upper"], level),
        }

    def calibrate(self, X_val, y_val, groups=None):
        """Conformalize both tails on the validation split and estimate the tail factor for ES.

        Parameters
        ----------
        groups : array-like, optional
            Each validation row's observation date: the Kupiec check's halves are whole months (with
            one month there is no check, and no `val_kupiec_*` or `val_var_exceedance_rate` metric).

        Returns
        -------
        self
        """
        check_is_fitted(self, "members_")
        y = np.asarray(y_val, dtype=np.float64)
        raw = self._raw(X_val)
        tail = self.alpha / 2.0
        raw_cover = np.mean((y >= raw["lower"]) & (y <= raw["upper"]))
        # Out-of-sample check: calibrate on one half of the validation months, test on the other.
        # One month has no second half: the check is left out (a run whose validation split, or
        # the early half the held-out scores calibrate on, held one month failed here).
        months = row_months(groups, len(y))
        out_of_sample = {}
        if len(np.unique(month_labels(months))) >= 2:
            halves = month_holdout(months, fraction=0.5)
            hits, n = 0, 0
            for fit_part, test_part in (halves, halves[::-1]):
                adj = self._adjustments({k: v[fit_part] for k, v in raw.items()}, y[fit_part])
                hits += int(np.sum(y[test_part] < raw["lower"][test_part] - adj["lower"]))
                n += len(y[test_part])
            kupiec = kupiec_pof(hits, n, tail)
            out_of_sample = {
                "val_var_exceedance_rate": kupiec["rate"],
                "val_kupiec_lr": kupiec["lr"],
                "val_kupiec_pvalue": kupiec["pvalue"],
            }
        self.adjustment_ = self._adjustments(raw, y)
        lower = raw["lower"] - self.adjustment_["lower"]
        depth = np.maximum(raw["mean"] - lower, 1e-9)
        below = y < lower
        self.tail_factor_ = float(np.mean((lower[below] - y[below]) / depth[below])) if below.any() else 0.0
        self.metrics_ = {"val_coverage_uncalibrated": float(raw_cover), **out_of_sample}
        self.info_ = {"adjustment": dict(self.adjustment_), "tail_factor": self.tail_factor_, "var_level": 1.0 - tail}
        return self

    def predict(self, X):
        """The conditional mean of the residual."""
        check_is_fitted(self, "members_")
        return self.members_["mean"].predict(self._frame(X))

    def predict_interval(self, X):
        """``(lower, upper)``: the calibrated 5% and 95% quantiles (for ``alpha=0.1``)."""
        return self._interval(self._raw(X))

    def predict_var_es(self, X):
        """``(VaR, ES)`` per row at ``1 - alpha/2``, as positive price points below fair value.

        VaR is minus the calibrated lower quantile; ES adds the validation tail factor times the
        bond's distance from its mean to that quantile, so a wide-tailed bond gets a deep ES.
        """
        return self._var_es(self._raw(X))

    def predict_outputs(self, X) -> dict[str, Any]:
        """Everything :meth:`predict`, :meth:`predict_interval` and :meth:`predict_var_es` give, from one
        pass of the three boosters (the three methods run them seven times)."""
        check_is_fitted(self, "members_")
        raw = self._raw(X)
        (lower, upper), (var, es) = self._interval(raw), self._var_es(raw)
        return {"mean": raw["mean"], "lower": lower, "upper": upper, "level": float(self.interval_level_), "var": var, "es": es}

    def _interval(self, raw: dict[str, np.ndarray]):
        lower = raw["lower"] - self.adjustment_["lower"]
        upper = np.maximum(raw["upper"] + self.adjustment_["upper"], lower)
        return lower, upper

    def _var_es(self, raw: dict[str, np.ndarray]):
        lower = raw["lower"] - self.adjustment_["lower"]
        depth = np.maximum(raw["mean"] - lower, 0.0)
        return -lower, -(lower - self.tail_factor_ * depth)

"""Probabilistic model: Bayesian ridge on a regime-aware spline basis, a variance model, normalized conformal.

The residual's noise is heteroscedastic (small issues and stressed months are noisier), so one
global variance gives intervals too wide for calm, liquid bonds and too narrow in a crisis.

- **Mean**: bond effects (liquidity, high yield, long investment grade) widen with market stress,
  so the basis holds each bond term (cubic splines, one-hot categories) both alone and times the
  standardised market credit spread, plus the market state linearly: splines of the market state
  would give the 30-odd training months a free intercept each and memorise their common shocks.
- **Variance**: gradient boosting with a log link (Poisson deviance, so it estimates E[e^2], not
  a geometric mean) of the squared residuals of mean models fitted on the other time blocks: the
  in-sample residual of a basis this rich understates the error on a new month. It sees the bond
  features and the credit spread (monotone: a wider spread never means a quieter market), not
  the curve factors, whose month-specific values let trees memorise single training months.
- **Calibration**: normalized conformal prediction on the validation split scales
  ``mean +- q * sigma(x)`` so that 90% of validation residuals fall inside; the predictive std is
  that band's half-width over the normal 95% quantile, so a Gaussian with it reproduces the band.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any

import numpy as np
from scipy.stats import norm
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, SplineTransformer, StandardScaler
from sklearn.utils._param_validation import Interval, RealNotInt
from sklearn.utils.validation import check_is_fitted

from bondexp.data.split import month_blocks
from bondexp.errors import ConfigError
from bondexp.feature_names import CATEGORICAL_FEATURES, MARKET_FEATURES
from bondexp.models.base import (
    CompositeRegressor,
    booster_constraints,
    fit_time_ordered,
)
from bondexp.models.gram_ridge import GramSums, fit_bayesian_ridge
from bondexp.models.quantile import conformal_quantile

#: The market-state feature that scales the bond terms and drives the variance model.
STRESS_FEATURE = "market_credit_spread"
#: Rows of the design built and multiplied at once, fitting (its sums) and predicting. A 65,536-row
#: design is 105 MB and the ridge's predictive std makes three more of that size: in blocks the
#: copies reuse the same few MB instead of faulting in fresh pages, and 600,000 rows need no GBs.
DESIGN_ROWS = 8192


class BayesianHeteroscedasticRegressor(CompositeRegressor):
    """Bayesian ridge mean, boosted variance on cross-fitted residuals, normalized conformal 90% band.

    Parameters
    ----------
    alpha : float
        Miscoverage of the calibrated band (0.1: 90%).
    n_knots : int
        Knots of the cubic spline basis of each numeric bond feature (0 or 1: linear features).
    n_folds : int
        Consecutive time blocks of whole training months; each block's residuals for the variance
        model come from a mean model fitted on the other blocks.
    variance_max_iter, variance_learning_rate, variance_min_samples_leaf, variance_max_leaf_nodes
        The variance booster (early-stopped on the latest rows).
    early_stopping : dict, optional
    random_state : int, optional

    Attributes
    ----------
    basis_ : ColumnTransformer
        Splines of the numeric bond features and one-hot categories.
    market_ : ColumnTransformer or None
        The standardised market-state features.
    mean_ : BayesianRidge
        The mean on :meth:`_design`.
    members_ : dict
        ``variance``: the booster of the squared residual.
    scale_ : float
        The normalized conformal quantile from validation (the normal quantile until calibrated).
    interval_level_ : float

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> X = pd.DataFrame({"a": rng.uniform(-1, 1, 800)})
    >>> y = X["a"].to_numpy() + rng.normal(size=800) * (1 + X["a"].to_numpy() ** 2)
    >>> model = BayesianHeteroscedasticRegressor(n_knots=4, variance_min_samples_leaf=50).fit(X[:600], y[:600])
    >>> bool(np.all(model.calibrate(X[600:], y[600:]).predict_std(X[600:]) > 0))
    True
    """

    _parameter_constraints: dict = {
        "alpha": [Interval(RealNotInt, 0, 1, closed="neither")],
        "n_knots": [Interval(Integral, 0, None, closed="left")],
        "n_folds": [Interval(Integral, 2, None, closed="left")],
        **booster_constraints(prefix="variance_"),
        "early_stopping": [dict, None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        alpha: float = 0.1,
        n_knots: int = 5,
        n_folds: int = 5,
        variance_max_iter: int = 300,
        variance_learning_rate: float = 0.1,
        variance_min_samples_leaf: int = 500,
        variance_max_leaf_nodes: int = 7,
        early_stopping: dict[str, Any] | None = None,
        random_state: int | None = None,
    ):
        self.alpha = alpha
        self.n_knots = n_knots
        self.n_folds = n_folds
        self.variance_max_iter = variance_max_iter
        self.variance_learning_rate = variance_learning_rate
        self.variance_min_samples_leaf = variance_min_samples_leaf
        self.variance_max_leaf_nodes = variance_max_leaf_nodes
        self.early_stopping = early_stopping
        self.random_state = random_state

    def _bases(self, names):
        """Unfitted (bond basis, market-state scaler or None) for the feature ``names``."""
        cats = [n for n in names if n in CATEGORICAL_FEATURES]
        nums = [n for n in names if n not in CATEGORICAL_FEATURES and n not in MARKET_FEATURES]
        market = [n for n in names if n in MARKET_FEATURES]
        numeric = (
            Pipeline([("scale", StandardScaler()), ("spline", SplineTransformer(n_knots=self.n_knots, degree=3))])
            if self.n_knots > 1
            else StandardScaler()
        )
        parts = [("num", numeric, nums)] if nums else []
        if cats:
            parts.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), cats))
        if not parts:
            raise ConfigError(f"The bayesian model needs at least one bond feature. Got {list(names)} instead.")
        scaler = ColumnTransformer([("market", StandardScaler(), market)]) if market else None
        return ColumnTransformer(parts), scaler

    def _design(self, X):
        """``[bond basis, market state, bond basis x standardised credit spread]`` (as available)."""
        return self._stack(self.basis_.transform(X), None if self.market_ is None else self.market_.transform(X))

    def _stack(self, bond, market):
        if market is None:
            return bond
        blocks = [bond, market]
        if self.stress_column_ is not None:
            blocks.append(bond * market[:, [self.stress_column_]])
        return np.hstack(blocks)

    def _ridge_predict(self, ridge, X, *, return_std=False):
        """``ridge.predict`` on ``X``'s design (and its std), the design built :data:`DESIGN_ROWS` rows at a time."""
        bond = self.basis_.transform(X)
        market = None if self.market_ is None else self.market_.transform(X)
        mean, std = np.empty(len(bond)), np.empty(len(bond))
        for start in range(0, len(bond), DESIGN_ROWS):
            rows = slice(start, start + DESIGN_ROWS)
            design = self._stack(bond[rows], None if market is None else market[rows])
            if return_std:
                mean[rows], std[rows] = ridge.predict(design, return_std=True)
            else:
                mean[rows] = ridge.predict(design)
        return (mean, std) if return_std else mean

    def _block_sums(self, X, y, block_of_row) -> list[GramSums]:
        """Each time block's :class:`GramSums` of :meth:`_design`, built :data:`DESIGN_ROWS` rows at a time."""
        sums: list[GramSums] = []
        for start in range(0, len(y), DESIGN_ROWS):
            rows = slice(start, start + DESIGN_ROWS)
            design, target, blocks = self._design(X.iloc[rows]), y[rows], block_of_row[rows]
            if not sums:  # shifted by the first rows' means, near the column means: see GramSums
                sums = [GramSums.zeros(design.mean(axis=0), float(target.mean())) for _ in range(self.n_folds)]
            for k in np.unique(blocks):
                at = blocks == k
                sums[k].add(design[at], target[at])
        return sums

    def _variance_features(self):
        """Features the variance booster sees: everything but the curve factors."""
        return [n for n in self.columns_ if n not in MARKET_FEATURES or n == STRESS_FEATURE]

    def fit(self, X, y, groups=None):
        """Fit the mean, then the variance booster on residuals cross-fitted over consecutive time blocks.

        Parameters
        ----------
        groups : array-like, optional
            Each row's month: the cross-fitting blocks and the variance booster's early-stopping
            holdout are whole months (see :mod:`bondexp.models.base` for None).

        Returns
        -------
        self

        Raises
        ------
        InvalidParameterError
            A parameter breaks its constraint (``n_folds`` below 2, say).
        ConfigError
            If ``n_folds`` is above the months, or there is no bond feature.
        """
        X, y, months = self._fit_data(X, y, groups)
        names = self.columns_
        try:
            block_of_row = month_blocks(months, n_blocks=self.n_folds)
        except ValueError as exc:
            raise ConfigError(f"The 'n_folds' parameter must leave each time block a month: {exc}") from None
        self.basis_, self.market_ = self._bases(names)
        self.basis_.fit(X)
        if self.market_ is not None:
            self.market_.fit(X)
        market = [n for n in names if n in MARKET_FEATURES]
        self.stress_column_ = market.index(STRESS_FEATURE) if STRESS_FEATURE in market else None
        # The ridge needs only sums over the design's rows (bondexp.models.gram_ridge): one pass builds
        # the design DESIGN_ROWS rows at a time and sums each time block; the mean's fit takes every
        # block's sums and each fold's fit all but its own block's. No design is ever whole (at
        # 600,000 rows one is about 1 GB, and an SVD of it held three).
        block_sums = self._block_sums(X, y, block_of_row)
        everything = sum(block_sums[1:], block_sums[0])
        self.mean_ = fit_bayesian_ridge(everything)
        squared = np.empty(len(y))
        for k in range(self.n_folds):
            block = block_of_row == k
            fold = fit_bayesian_ridge(everything - block_sums[k])
            squared[block] = (y[block] - self._ridge_predict(fold, X[block])) ** 2
        variance_features = self._variance_features()
        booster = self._new_booster(
            loss="poisson",
            max_iter=self.variance_max_iter,
            learning_rate=self.variance_learning_rate,
            min_samples_leaf=self.variance_min_samples_leaf,
            max_leaf_nodes=self.variance_max_leaf_nodes,
            monotonic_cst={STRESS_FEATURE: 1} if STRESS_FEATURE in variance_features else None,
        )
        self.members_ = {"variance": fit_time_ordered(booster, X[variance_features], squared, groups=months)}
        self.scale_ = float(norm.ppf(1.0 - self.alpha / 2.0))
        self.interval_level_ = 1.0 - self.alpha
        self.metrics_, self.info_ = {}, {}
        return self

    def _sigma(self, X):
        """Noise std from the variance booster, plus the ridge's own (epistemic) std."""
        X = self._frame(X)
        _, ridge_std = self._ridge_predict(self.mean_, X, return_std=True)
        return self._sigma_of(X, ridge_std)

    def _sigma_of(self, X, ridge_std):
        """:meth:`_sigma` given the checked frame ``X`` and the ridge's predictive std on it."""
        # BayesianRidge's std includes its global noise 1 / alpha_, which the booster already models.
        epistemic = np.maximum(ridge_std**2 - 1.0 / self.mean_.alpha_, 0.0)
        noise = self.members_["variance"].predict(X[self._variance_features()])
        return np.sqrt(noise + epistemic)

    def calibrate(self, X_val, y_val):
        """Scale the band so that ``1 - alpha`` of validation residuals fall inside (normalized conformal).

        Returns
        -------
        self
        """
        check_is_fitted(self, "members_")
        y = np.asarray(y_val, dtype=np.float64)
        scores = np.abs(y - self.predict(X_val)) / self._sigma(X_val)
        gaussian = float(norm.ppf(1.0 - self.alpha / 2.0))
        self.metrics_ = {"val_coverage_uncalibrated": float(np.mean(scores <= gaussian))}
        self.scale_ = conformal_quantile(scores, 1.0 - self.alpha)
        self.info_ = {"conformal_scale": self.scale_, "gaussian_scale": gaussian}
        return self

    def predict(self, X):
        """The posterior mean of the residual."""
        check_is_fitted(self, "mean_")
        return self._ridge_predict(self.mean_, self._frame(X))

    def predict_std(self, X):
        """Predictive std: the calibrated band's half-width over the normal ``1 - alpha/2`` quantile."""
        return self._sigma(X) * self.scale_ / norm.ppf(1.0 - self.alpha / 2.0)

    def predict_interval(self, X):
        """``(lower, upper)``: mean -+ the calibrated conformal scale times sigma(x)."""
        mean, half = self.predict(X), self.scale_ * self._sigma(X)
        return mean - half, mean + half

    def predict_outputs(self, X) -> dict[str, Any]:
        """Everything :meth:`predict`, :meth:`predict_interval` and :meth:`predict_std` give, from one design
        matrix and one ridge and booster pass (the three methods build the design five times)."""
        check_is_fitted(self, "mean_")
        X = self._frame(X)
        mean, ridge_std = self._ridge_predict(self.mean_, X, return_std=True)
        sigma = self._sigma_of(X, ridge_std)
        half = self.scale_ * sigma
        return {
            "mean": mean,
            "lower": mean - half,
            "upper": mean + half,
            "level": float(self.interval_level_),
            "std": sigma * self.scale_ / norm.ppf(1.0 - self.alpha / 2.0),
        }

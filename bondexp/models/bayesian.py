"""Probabilistic model: Bayesian ridge on a spline basis, a variance model, normalized conformal calibration.

The residual's noise is heteroscedastic (small issues and stressed months are noisier), so one
global variance gives intervals too wide for calm, liquid bonds and too narrow in a crisis. A
ridge on the same spline basis learns the log squared residual (noise scales multiply, so they
add on the log scale, and a linear model of a target this noisy overfits far less than a tree); normalized conformal prediction on
the validation split then scales ``mean +- q * sigma(x)`` so that 90% of validation residuals fall
inside, and the predictive std is that band's half-width over the normal 95% quantile, so a
Gaussian with this std reproduces the calibrated band.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy.stats import norm
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import BayesianRidge, RidgeCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, SplineTransformer, StandardScaler
from sklearn.utils.validation import check_is_fitted

from bondexp.features import CATEGORICAL_FEATURES
from bondexp.models.base import CompositeRegressor, as_frame, feature_names
from bondexp.models.quantile import conformal_quantile


class BayesianHeteroscedasticRegressor(CompositeRegressor):
    """Bayesian ridge mean, ridge log-variance, normalized conformal 90% band.

    Parameters
    ----------
    alpha : float
        Miscoverage of the calibrated band (0.1: 90%).
    n_knots : int
        Knots of the cubic spline basis of each numeric feature (0: linear features only).
    random_state : int, optional
        Unused (both fits are deterministic); kept so the model step can set it like any other.

    Attributes
    ----------
    mean_ : Pipeline
        Spline basis and one-hot categories, then ``BayesianRidge``.
    variance_ : Pipeline
        Spline basis and one-hot categories, then a ridge of the log squared residual.
    scale_ : float
        The normalized conformal quantile from validation.
    interval_level_ : float

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> X = pd.DataFrame({"a": rng.uniform(-1, 1, 800)})
    >>> y = X["a"].to_numpy() + rng.normal(size=800) * (1 + X["a"].to_numpy() ** 2)
    >>> model = BayesianHeteroscedasticRegressor(n_knots=4).fit(X[:600], y[:600])
    >>> bool(np.all(model.calibrate(X[600:], y[600:]).predict_std(X[600:]) > 0))
    True
    """

    def __init__(
        self,
        *,
        alpha: float = 0.1,
        n_knots: int = 5,
        random_state: Optional[int] = None,
    ):
        self.alpha = alpha
        self.n_knots = n_knots
        self.random_state = random_state

    def _basis(self, names) -> ColumnTransformer:
        cats = [n for n in names if n in CATEGORICAL_FEATURES]
        nums = [n for n in names if n not in CATEGORICAL_FEATURES]
        numeric = (
            Pipeline([("scale", StandardScaler()), ("spline", SplineTransformer(n_knots=self.n_knots, degree=3))])
            if self.n_knots > 1
            else StandardScaler()
        )
        parts = [("num", numeric, nums)]
        if cats:
            parts.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), cats))
        return ColumnTransformer(parts)

    def fit(self, X, y):
        """Fit the Bayesian ridge mean, then the variance ridge on its log squared residuals.

        Returns
        -------
        self
        """
        names = feature_names(X)
        X = as_frame(X, names)
        y = np.asarray(y, dtype=np.float64)
        self.feature_names_in_ = np.asarray(names, dtype=object)
        self.mean_ = Pipeline([("basis", self._basis(names)), ("ridge", BayesianRidge())]).fit(X, y)
        log_sq = np.log((y - self.mean_.predict(X)) ** 2 + 1e-6)
        self.variance_ = Pipeline([("basis", self._basis(names)), ("ridge", RidgeCV(alphas=np.logspace(-2, 4, 13)))])
        self.variance_.fit(X, log_sq)
        # E[log chi2_1] = -1.27: shift so exp(.) estimates the variance, not its geometric mean.
        self.log_var_shift_ = float(np.log(np.mean(np.exp(log_sq - self.variance_.predict(X)))))
        self.scale_ = float(norm.ppf(1.0 - self.alpha / 2.0))
        self.interval_level_ = 1.0 - self.alpha
        self.metrics_, self.info_ = {}, {}
        return self

    def _sigma(self, X):
        """Noise std from the variance model, plus the ridge's own (epistemic) std."""
        X = as_frame(X, list(self.feature_names_in_))
        _, ridge_std = self.mean_.predict(X, return_std=True)
        noise_var = np.exp(self.variance_.predict(X) + self.log_var_shift_)
        return np.sqrt(noise_var + ridge_std**2)

    def calibrate(self, X_val, y_val):
        """Scale the band so that ``1 - alpha`` of validation residuals fall inside (normalized conformal).

        Returns
        -------
        self
        """
        check_is_fitted(self, "variance_")
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
        return self.mean_.predict(as_frame(X, list(self.feature_names_in_)))

    def predict_std(self, X):
        """Predictive std: the calibrated band's half-width over the normal ``1 - alpha/2`` quantile."""
        return self._sigma(X) * self.scale_ / norm.ppf(1.0 - self.alpha / 2.0)

    def predict_interval(self, X):
        """``(lower, upper)``: mean -+ the calibrated conformal scale times sigma(x)."""
        mean, half = self.predict(X), self.scale_ * self._sigma(X)
        return mean - half, mean + half

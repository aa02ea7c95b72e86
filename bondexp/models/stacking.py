"""The stacking ensemble: forest, boosting, an MLP and a ridge, blended by a linear meta-model.

Stacking with K-fold cross-validation fits every member K+1 times and, on a time series, shuffles
the future into the folds. A holdout blend fits the members once on the earlier training rows,
fits the meta-model on their predictions for the latest rows (out of sample, in time order) and
then refits the members on all rows: two fits per member, and the blend weights are honest.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from numbers import Integral
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, RidgeCV
from sklearn.neural_network import MLPRegressor
from sklearn.utils._param_validation import Interval, InvalidParameterError, RealNotInt
from sklearn.utils.validation import check_is_fitted

from bondexp.data.split import month_holdout
from bondexp.models.base import (
    CompositeRegressor,
    fit_time_ordered,
    scaled,
    set_early_stopping,
)


class StackedRegressor(CompositeRegressor):
    """Holdout-blended stack of a random forest, gradient boosting, an MLP and a ridge.

    Parameters
    ----------
    forest_n_estimators, forest_min_samples_leaf, forest_max_samples, forest_max_features
        The random forest member (bootstrap subsamples bound its cost).
    gb_max_iter, gb_learning_rate, gb_min_samples_leaf
        The HistGradientBoosting member (early-stopped on the latest rows).
    mlp_hidden_layer_sizes, mlp_alpha, mlp_max_iter, mlp_learning_rate_init
        The MLP member, on standardised features with one-hot categories (early-stopped).
    holdout_fraction : float
        About this share of the training rows, the latest whole months, is what the meta-model is fit on.
    refit : bool
        Refit the members on all rows after the blend is chosen (False: keep the first fit).
    monotone_features : sequence of str
        Features the boosting member's prediction may only increase with (the previous residual).
    early_stopping : dict, optional
        ``enabled``, ``patience``, ``validation_fraction``, ``tol`` for the iterative members.
    random_state : int, optional
    n_jobs : int
        Threads of the forest member (1 inside a step).

    Attributes
    ----------
    members_ : dict
        Fitted members by name.
    weights_ : dict
        The meta-model's weight per member, and ``intercept``.
    holdout_rmse_ : dict
        Each member's and the blend's RMSE on the holdout rows.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> X = pd.DataFrame({"a": np.arange(200.0), "b": np.sin(np.arange(200.0))})
    >>> model = StackedRegressor(forest_n_estimators=5, gb_max_iter=20, mlp_max_iter=20, random_state=0)
    >>> model.fit(X, X["b"] * 2).predict(X).shape
    (200,)
    """

    _parameter_constraints: dict = {
        **{
            f"forest_{k}": RandomForestRegressor._parameter_constraints[k]
            for k in ("n_estimators", "min_samples_leaf", "max_samples", "max_features")
        },
        **{f"gb_{k}": HistGradientBoostingRegressor._parameter_constraints[k] for k in ("max_iter", "learning_rate", "min_samples_leaf")},
        "mlp_hidden_layer_sizes": MLPRegressor._parameter_constraints["hidden_layer_sizes"],  # [16, 8], or 16
        **{f"mlp_{k}": MLPRegressor._parameter_constraints[k] for k in ("alpha", "max_iter", "learning_rate_init")},
        "holdout_fraction": [Interval(RealNotInt, 0, 1, closed="neither")],
        "refit": ["boolean"],
        "monotone_features": ["array-like"],
        "early_stopping": [dict, None],
        "random_state": ["random_state"],
        "n_jobs": RandomForestRegressor._parameter_constraints["n_jobs"],
    }

    def _validate_params(self) -> None:
        """scikit-learn's check of the constraints, and every MLP layer at least one unit wide (the MLP itself
        checks that only in ``fit``: a ``[0]`` failed the step once the run had begun)."""
        super()._validate_params()
        layers = _layers(self.mlp_hidden_layer_sizes)
        if not all(isinstance(n, Integral) and int(n) >= 1 for n in layers):
            raise InvalidParameterError(
                f"The 'mlp_hidden_layer_sizes' parameter of {type(self).__name__} must be layer widths of at least 1 "
                f"([16] or [16, 8]). Got {list(layers)!r} instead."
            )

    def __init__(
        self,
        *,
        forest_n_estimators: int = 30,
        forest_min_samples_leaf: int = 20,
        forest_max_samples: float = 0.2,
        forest_max_features: float = 0.5,
        gb_max_iter: int = 500,
        gb_learning_rate: float = 0.05,
        gb_min_samples_leaf: int = 100,
        mlp_hidden_layer_sizes: Sequence[int] = (16,),
        mlp_alpha: float = 0.1,
        mlp_max_iter: int = 30,
        mlp_learning_rate_init: float = 1e-3,
        holdout_fraction: float = 0.25,
        refit: bool = True,
        monotone_features: Sequence[str] = ("prev_residual",),
        early_stopping: dict[str, Any] | None = None,
        random_state: int | None = None,
        n_jobs: int = 1,
    ):
        self.forest_n_estimators = forest_n_estimators
        self.forest_min_samples_leaf = forest_min_samples_leaf
        self.forest_max_samples = forest_max_samples
        self.forest_max_features = forest_max_features
        self.gb_max_iter = gb_max_iter
        self.gb_learning_rate = gb_learning_rate
        self.gb_min_samples_leaf = gb_min_samples_leaf
        self.mlp_hidden_layer_sizes = mlp_hidden_layer_sizes
        self.mlp_alpha = mlp_alpha
        self.mlp_max_iter = mlp_max_iter
        self.mlp_learning_rate_init = mlp_learning_rate_init
        self.holdout_fraction = holdout_fraction
        self.refit = refit
        self.monotone_features = monotone_features
        self.early_stopping = early_stopping
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _members(self, names: Sequence[str]) -> dict[str, Any]:
        """Unfitted members, with the early-stopping settings put in."""
        mono = {f: 1 for f in self.monotone_features if f in names} or None
        members = {
            "forest": RandomForestRegressor(
                n_estimators=self.forest_n_estimators,
                min_samples_leaf=self.forest_min_samples_leaf,
                max_samples=self.forest_max_samples,
                max_features=self.forest_max_features,
                n_jobs=self.n_jobs,
                random_state=self.random_state,
            ),
            "boosting": HistGradientBoostingRegressor(
                max_iter=self.gb_max_iter,
                learning_rate=self.gb_learning_rate,
                min_samples_leaf=self.gb_min_samples_leaf,
                monotonic_cst=mono,
                random_state=self.random_state,
            ),
            "mlp": scaled(
                MLPRegressor(
                    hidden_layer_sizes=_layers(self.mlp_hidden_layer_sizes),
                    alpha=self.mlp_alpha,
                    max_iter=self.mlp_max_iter,
                    learning_rate_init=self.mlp_learning_rate_init,
                    random_state=self.random_state,
                ),
                names,
            ),
            "ridge": scaled(RidgeCV(alphas=np.logspace(-3, 3, 13)), names),
        }
        for member in members.values():
            set_early_stopping(member, self._early_stopping())
        return members

    def fit(self, X, y, groups=None):
        """Fit the members on the earlier months, the blend on the latest, then refit the members.

        Parameters
        ----------
        groups : array-like, optional
            Each row's month: the blend's holdout and the members' early stopping use whole months
            (see :mod:`bondexp.models.base` for None).

        Returns
        -------
        self
        """
        X, y, months = self._fit_data(X, y, groups)
        names = self.columns_
        early, late = month_holdout(months, fraction=self.holdout_fraction)
        members = self._members(names)
        # The MLP's epoch cap is its time budget; running into it is expected, not a fault.
        warnings.filterwarnings("ignore", category=ConvergenceWarning, module="sklearn.neural_network")
        first = {name: fit_time_ordered(clone(m), X.iloc[early], y[early], groups=months[early]) for name, m in members.items()}
        holdout = np.column_stack([m.predict(X.iloc[late]) for m in first.values()])
        self.meta_ = LinearRegression(positive=True).fit(holdout, y[late])
        blend = self.meta_.predict(holdout)
        self.holdout_rmse_ = {name: float(np.sqrt(np.mean((y[late] - holdout[:, j]) ** 2))) for j, name in enumerate(first)}
        self.holdout_rmse_["blend"] = float(np.sqrt(np.mean((y[late] - blend) ** 2)))
        self.weights_ = {name: float(w) for name, w in zip(first, self.meta_.coef_, strict=True)}
        self.weights_["intercept"] = float(self.meta_.intercept_)
        self.members_ = {name: fit_time_ordered(m, X, y, groups=months) for name, m in members.items()} if self.refit else first
        self.info_ = {"weights": dict(self.weights_), "holdout_rmse": dict(self.holdout_rmse_)}
        return self

    def predict(self, X):
        """The meta-model's blend of the members' predictions."""
        check_is_fitted(self, "members_")
        X = self._frame(X)
        return self.meta_.predict(np.column_stack([m.predict(X) for m in self.members_.values()]))


def _layers(sizes) -> tuple:
    """The MLP member's layer widths as a tuple: ``16`` is ``(16,)``, as MLPRegressor reads it."""
    return (sizes,) if isinstance(sizes, Integral) else tuple(sizes)

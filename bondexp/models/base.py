"""What every bondexp estimator shares: early stopping on the latest months, preprocessing, feature lookup.

Early stopping holds out the latest whole months of the training rows
(:func:`bondexp.data.split.month_holdout`); the random holdout scikit-learn draws by itself shares
months with the rows it trains on, and every row of a month sees the same sector shocks, so a
random holdout rewards memorising month x sector effects that never come back.

**Months.** bondexp's estimators take an optional ``groups`` fit argument: each row's observation
date (or month label). The model step passes it (``fit(X, y, groups=obs_date)``); every holdout
and fold they cut is then cut between whole months. Without it (``fit(X, y)`` alone, as in any
scikit-learn code) each row counts as its own month: rows must be in time order, and cuts fall at
row counts.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from bondexp.data.split import month_holdout, month_labels
from bondexp.feature_names import CATEGORICAL_FEATURES, MARKET_FEATURES

#: Early-stopping settings used when none are given (the defaults of ``conf/config.yaml``).
DEFAULT_EARLY_STOPPING = {"enabled": True, "patience": 10, "validation_fraction": 0.1, "tol": 1e-4}
#: Modules whose estimators split on raw values, so category codes and scales need no preprocessing.
TREE_MODULES = ("sklearn.tree", "sklearn.ensemble", "lightgbm", "xgboost", "catboost")


class CompositeRegressor(RegressorMixin, BaseEstimator):
    """Base of bondexp's own estimators: they take the raw feature frame and build their members.

    Subclasses take an ``early_stopping`` dict (``enabled``, ``patience``, ``validation_fraction``,
    ``tol``) and pass it to their iterative members, and expose those fitted members as
    ``members_`` so the model step can report how many iterations each one ran. They declare
    ``_parameter_constraints`` as scikit-learn's estimators do (a parameter passed on to a member
    takes that member's own constraint), so a bad value in a model file is a config error before
    any work, and ``fit`` checks them first.
    """

    def __sklearn_tags__(self):
        """Dense float input only: the members are built on named columns of a DataFrame."""
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.input_tags.allow_nan = False
        return tags

    def _fit_data(self, X, y, groups=None) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """The shared preamble of ``fit``: validate ``X``/``y`` (scikit-learn's ``validate_data``, which
        sets ``n_features_in_`` and, for a DataFrame, ``feature_names_in_``) and return ``(X as a frame
        with named columns, y as float64, each row's month)``.

        Raises
        ------
        InvalidParameterError
            A parameter breaks its ``_parameter_constraints`` (scikit-learn's own check, which
            the run's preflight also asks before any step: see ``bondexp.steps.train``).
        ValueError
            On NaN or infinity, complex numbers, fewer than two rows, or ``groups`` not one per row.
        """
        self._validate_params()
        Xa, ya = validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2, y_numeric=True)
        self.columns_ = feature_names(X) if isinstance(X, pd.DataFrame) else [f"x{i}" for i in range(Xa.shape[1])]
        return pd.DataFrame(Xa, columns=self.columns_), np.asarray(ya, dtype=np.float64), row_months(groups, len(ya))

    def _frame(self, X) -> pd.DataFrame:
        """``X`` checked against the fit (fitted, same number and names of columns, finite) as a named frame."""
        check_is_fitted(self)
        return pd.DataFrame(validate_data(self, X, dtype=np.float64, reset=False), columns=self.columns_)

    def _early_stopping(self) -> dict[str, Any]:
        """The estimator's early-stopping settings with the defaults filled in."""
        return {**DEFAULT_EARLY_STOPPING, **(getattr(self, "early_stopping", None) or {})}

    def _new_booster(self, **params: Any) -> Any:
        """A ``HistGradientBoostingRegressor(**params)`` member with this estimator's ``random_state`` and early stopping."""
        from sklearn.ensemble import HistGradientBoostingRegressor  # here: importing this module stays light

        booster = HistGradientBoostingRegressor(random_state=getattr(self, "random_state", None), **params)
        set_early_stopping(booster, self._early_stopping())
        return booster


def booster_constraints(prefix: str = "") -> dict[str, Any]:
    """The HistGradientBoosting member's constraints on ``max_iter``, ``learning_rate``, ``min_samples_leaf`` and
    ``max_leaf_nodes``, named ``<prefix><parameter>``: a composite passes these to its boosters as they are."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    names = ("max_iter", "learning_rate", "min_samples_leaf", "max_leaf_nodes")
    return {f"{prefix}{name}": HistGradientBoostingRegressor._parameter_constraints[name] for name in names}


def takes_raw_features(estimator) -> bool:
    """Whether ``estimator`` should get the feature frame as is (trees and bondexp's composites).

    Everything else (linear models, MLPs, kernels, neighbours) gets standardised numbers and
    one-hot categories, since a rating code of 6 is not six times a code of 1.
    """
    if isinstance(estimator, CompositeRegressor):
        return True
    return type(estimator).__module__.startswith(TREE_MODULES)


def make_preprocessor(features: Sequence[str], *, categorical: Sequence[str]) -> ColumnTransformer:
    """Standardise numeric columns and one-hot encode ``categorical`` ones (unknown codes -> all zeros)."""
    cats = [f for f in features if f in categorical]
    nums = [f for f in features if f not in categorical]
    parts = [("num", StandardScaler(), nums)]
    if cats:
        parts.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), cats))
    return ColumnTransformer(parts, verbose_feature_names_out=False)


def scaled(estimator, features: Sequence[str], *, categorical: Sequence[str] | None = None) -> Pipeline:
    """``estimator`` behind :func:`make_preprocessor` (categorical defaults to the known code features)."""
    cats = CATEGORICAL_FEATURES if categorical is None else categorical
    return Pipeline([("prep", make_preprocessor(features, categorical=cats)), ("model", estimator)])


def feature_names(X) -> list[str]:
    """Column names of a frame (``x0, x1, ...`` for an array), so members can find features by name."""
    if isinstance(X, pd.DataFrame):
        return [str(c) for c in X.columns]
    return [f"x{i}" for i in range(np.shape(X)[1])]


def market_columns(names: Sequence[str]) -> list[str]:
    """The market-state features among ``names``."""
    return [n for n in names if n in MARKET_FEATURES]


def row_months(groups, n_rows: int) -> np.ndarray:
    """The month label of each row: ``groups`` as given, or each row its own month when it is None.

    Raises
    ------
    ValueError
        If ``groups`` does not hold one label per row.
    """
    if groups is None:
        return np.arange(n_rows)
    groups = np.asarray(groups)
    if groups.shape != (n_rows,):
        raise ValueError(f"The 'groups' fit argument must hold one month per row ({n_rows}). Got shape {groups.shape} instead.")
    return groups


def takes_groups(estimator) -> bool:
    """Whether ``estimator.fit`` (a Pipeline's last step) accepts the rows' months as ``groups``."""
    return "groups" in inspect.signature(final_estimator(estimator).fit).parameters


def final_estimator(model):
    """The last step of a Pipeline (or the model itself)."""
    return model[-1] if isinstance(model, Pipeline) else model


def transform_features(model, X):
    """``X`` through every step of a Pipeline but the last (unchanged for a bare estimator)."""
    if isinstance(model, Pipeline) and len(model) > 1:
        return model[:-1].transform(X)
    return X


def set_early_stopping(estimator, settings: Mapping[str, Any] | None) -> None:
    """Put the early-stopping ``settings`` into ``estimator`` (or a Pipeline's last step), in place.

    HistGradientBoosting, MLP and SGD-style estimators get ``early_stopping``, ``n_iter_no_change``,
    ``validation_fraction`` and ``tol``; GradientBoostingRegressor, which has no switch, gets
    ``n_iter_no_change`` (None turns it off); bondexp's composites with iterative members get the
    whole dict. Estimators
    with none of these parameters are left alone. ``enabled=false`` turns stopping off everywhere.
    """
    settings = {**DEFAULT_EARLY_STOPPING, **(settings or {})}
    est = final_estimator(estimator)
    params = est.get_params(deep=False)
    if isinstance(est, CompositeRegressor):
        if "early_stopping" in params:
            est.set_params(early_stopping=dict(settings))
        return
    update: dict[str, Any] = {}
    on = bool(settings["enabled"])
    if "early_stopping" in params:
        update["early_stopping"] = on
        if "n_iter_no_change" in params:
            update["n_iter_no_change"] = int(settings["patience"])
    elif "n_iter_no_change" in params:
        update["n_iter_no_change"] = int(settings["patience"]) if on else None
    if update:
        if "validation_fraction" in params:
            update["validation_fraction"] = float(settings["validation_fraction"])
        if "tol" in params:
            update["tol"] = float(settings["tol"])
        est.set_params(**update)


def _accepts_validation_set(estimator) -> bool:
    return "X_val" in inspect.signature(estimator.fit).parameters


def fit_time_ordered(model, X, y, *, groups=None):
    """Fit ``model`` (an estimator or a Pipeline); early stopping holds out the latest months.

    An estimator whose ``fit`` takes ``X_val``/``y_val`` (HistGradientBoosting) and has early
    stopping on is trained on the earlier months and stopped on the latest whole months holding
    about ``validation_fraction`` of the rows; the preprocessing before it is fit on all rows.
    An estimator whose ``fit`` takes ``groups`` (bondexp's own) gets the months. Anything else is
    fit as usual.

    Parameters
    ----------
    groups : array-like, optional
        Each row's observation date or month label; None: each row its own month (see the module).

    Returns
    -------
    model
        The fitted ``model``.
    """
    est = final_estimator(model)
    params = est.get_params(deep=False)
    if takes_groups(est):
        if isinstance(model, Pipeline):
            return model.fit(X, y, **{f"{model.steps[-1][0]}__groups": groups})
        return model.fit(X, y, groups=groups)
    if not (_accepts_validation_set(est) and params.get("early_stopping") is True):
        return model.fit(X, y)
    Xt = model[:-1].fit_transform(X, y) if isinstance(model, Pipeline) and len(model) > 1 else X
    fraction = float(params.get("validation_fraction") or DEFAULT_EARLY_STOPPING["validation_fraction"])
    months = row_months(groups, len(y))
    if len(np.unique(month_labels(months))) < 2:  # one month (a small regime's rows): cut in row order
        months = np.arange(len(y))
    rows = month_holdout(months, fraction=fraction)
    Xa, Xb = (Xt.iloc[r] if isinstance(Xt, pd.DataFrame) else Xt[r] for r in rows)
    y = np.asarray(y)
    est.fit(Xa, y[rows[0]], X_val=Xb, y_val=y[rows[1]])
    return model


def iterations(model) -> list[tuple[int, int]]:
    """``(iterations run, iteration limit)`` of every early-stoppable estimator in ``model``, members included.

    Only estimators with ``n_iter_no_change`` count: a solver that converged (Lasso's coordinate
    descent) did not stop early.
    """
    est = final_estimator(model)
    found = []
    params = est.get_params(deep=False)
    if "n_iter_no_change" in params and not isinstance(est, CompositeRegressor):
        if hasattr(est, "n_iter_") and "max_iter" in params:
            found.append((int(np.max(est.n_iter_)), int(params["max_iter"])))
        elif hasattr(est, "n_estimators_"):
            found.append((int(est.n_estimators_), int(params["n_estimators"])))
    for member in getattr(est, "members_", {}).values():
        found.extend(iterations(member))
    return found

"""scikit-learn's conformance suite for bondexp's own estimators, so users can lift them into their own pipelines.

The checks fit on their own small arrays (tens of rows, no month labels: each row its own month),
so each estimator gets parameters that fit such data quickly; the code paths are the shipped ones.
Tags declare what is not supported (sparse input, NaN); everything else must pass.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import check_param_validation, parametrize_with_checks
from threadpoolctl import threadpool_limits

from bondexp.errors import ConfigError
from bondexp.models.automl import AutoMLRegressor
from bondexp.models.bayesian import BayesianHeteroscedasticRegressor
from bondexp.models.factor import FactorRegressor
from bondexp.models.quantile import ConformalQuantileRegressor
from bondexp.models.regime import RegimeSwitchingRegressor
from bondexp.models.stacking import StackedRegressor


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One OpenMP thread: on tens of rows the boosters' thread start-up costs more than the fit."""
    with threadpool_limits(1):
        yield


SMALL = [
    # ridge, boosting and forest: every branch of the candidate builder (extra_trees is the forest branch with
    # another class), at half the cost of fitting both forests in each of the ~50 checks
    AutoMLRegressor(families=("ridge", "boosting", "forest"), n_candidates=2, n_folds=2, random_state=0),
    BayesianHeteroscedasticRegressor(n_folds=2, n_knots=3, variance_max_iter=10, variance_min_samples_leaf=5, random_state=0),
    FactorRegressor(random_state=0),
    ConformalQuantileRegressor(max_iter=10, min_samples_leaf=5, random_state=0),
    RegimeSwitchingRegressor(max_regimes=2, min_rows=10, max_iter=10, min_samples_leaf=5, random_state=0),
    StackedRegressor(
        forest_n_estimators=5,
        forest_min_samples_leaf=2,
        gb_max_iter=10,
        gb_min_samples_leaf=5,
        mlp_max_iter=5,
        early_stopping={"enabled": False},
        random_state=0,
    ),  # MLP's own stopping split needs more than ten rows
]


@parametrize_with_checks(SMALL)
def test_sklearn_conformance(estimator, check):
    check(estimator)


@pytest.mark.parametrize("estimator", SMALL, ids=lambda e: type(e).__name__)
def test_every_parameter_has_a_constraint_that_fit_checks_first(estimator):
    """scikit-learn's own check (not among check_estimator's): a constraint per parameter, and fit refusing a value
    of a wrong type or out of range with its InvalidParameterError. The run's preflight asks the same constraints
    before any step, so `models.advanced.forest_n_estimators=abc` no longer fails only once its step runs."""
    check_param_validation(type(estimator).__name__, estimator)


def _months_and_frame():
    rng = np.random.default_rng(0)
    month = np.repeat(np.arange(20), 10)
    spread = (np.where(np.arange(20) % 10 < 5, 0.03, 0.01) + rng.normal(0, 0.001, 20))[month]
    return pd.DataFrame({"a": rng.normal(size=200), "market_credit_spread": spread})


@pytest.mark.parametrize(
    "as_array, state_features, expected",
    [
        (False, None, ["market_credit_spread"]),  # found by name in a DataFrame
        (True, None, ["x0", "x1"]),  # a plain array: every column
        (True, [1], ["x1"]),  # by position
        (False, ["market_credit_spread"], ["market_credit_spread"]),  # by name, as conf/model/regime.yaml
    ],
)
def test_regime_state_columns_by_name_or_position(as_array, state_features, expected):
    X = _months_and_frame()
    data = X.to_numpy() if as_array else X
    model = RegimeSwitchingRegressor(state_features=state_features, max_regimes=2, min_rows=1000, max_iter=5, random_state=0)
    assert model.fit(data, X["a"]).state_features_ == expected


@pytest.mark.parametrize(
    "estimator, message",
    [
        (
            AutoMLRegressor(families=["ridge", "lasso"]),
            "The 'families' parameter of AutoMLRegressor must be a non-empty list of names among",
        ),
        (AutoMLRegressor(families=[]), "The 'families' parameter of AutoMLRegressor must be a non-empty list"),
        (StackedRegressor(mlp_hidden_layer_sizes=[0]), "The 'mlp_hidden_layer_sizes' parameter of StackedRegressor must be layer widths"),
        (
            RegimeSwitchingRegressor(min_regimes=3, max_regimes=2),
            "The 'min_regimes' parameter of RegimeSwitchingRegressor must be at most 'max_regimes' (2). Got 3",
        ),
    ],
)
def test_what_no_single_constraint_says_is_checked_with_the_constraints(estimator, message):
    """The preflight asks _validate_params only: these failed in fit, once the step ran."""
    X = _months_and_frame()
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        estimator._validate_params()
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        estimator.fit(X, X["a"])


def test_regime_unknown_state_column_names_the_parameter():
    X = _months_and_frame()
    with pytest.raises(ConfigError, match="'state_features'.*'curve_level'"):
        RegimeSwitchingRegressor(state_features=["curve_level"], min_rows=1000, max_iter=5).fit(X, X["a"])

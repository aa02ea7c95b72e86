"""scikit-learn's conformance suite for bondexp's own estimators, so users can lift them into their own pipelines.

The checks fit on their own small arrays (tens of rows, no month labels: each row its own month),
so each estimator gets parameters that fit such data quickly; the code paths are the shipped ones.
Tags declare what is not supported (sparse input, NaN); everything else must pass.
"""

from __future__ import annotations

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks
from threadpoolctl import threadpool_limits

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
    AutoMLRegressor(n_candidates=2, n_folds=2, random_state=0),
    BayesianHeteroscedasticRegressor(n_folds=2, n_knots=3, variance_max_iter=10, variance_min_samples_leaf=5, random_state=0),
    FactorRegressor(random_state=0),
    ConformalQuantileRegressor(max_iter=10, min_samples_leaf=5, random_state=0),
    RegimeSwitchingRegressor(max_regimes=2, min_rows=10, max_iter=10, min_samples_leaf=5, random_state=0),
    StackedRegressor(forest_n_estimators=5, forest_min_samples_leaf=2, gb_max_iter=10, gb_min_samples_leaf=5, mlp_max_iter=5,
                     early_stopping={"enabled": False}, random_state=0),  # MLP's own stopping split needs more than ten rows
]


@parametrize_with_checks(SMALL)
def test_sklearn_conformance(estimator, check):
    check(estimator)

"""Tests of bondexp.metrics against scikit-learn's and scipy's definitions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from sklearn import metrics as skm

from bondexp.metrics import coverage, gaussian_nll, interval_pinball, mae, pinball_loss, prediction_scores, r2, rmse


@pytest.fixture
def sample():
    rng = np.random.default_rng(0)
    y = rng.normal(0, 2, 500)
    return y, y + rng.normal(0.1, 0.7, 500)


def test_point_scores_match_sklearn(sample):
    y, pred = sample
    assert rmse(y, pred) == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)), rel=1e-12)
    assert mae(y, pred) == pytest.approx(skm.mean_absolute_error(y, pred), rel=1e-12)
    assert r2(y, pred) == pytest.approx(skm.r2_score(y, pred), rel=1e-12)


@pytest.mark.parametrize("quantile", [0.05, 0.5, 0.9])
def test_pinball_matches_sklearn(sample, quantile):
    y, pred = sample
    assert pinball_loss(y, pred, quantile=quantile) == pytest.approx(skm.mean_pinball_loss(y, pred, alpha=quantile), rel=1e-12)


def test_interval_pinball_is_the_mean_over_the_band_quantiles(sample):
    y, pred = sample
    lower, upper = pred - 1.0, pred + 1.5
    expected = 0.5 * (skm.mean_pinball_loss(y, lower, alpha=0.1) + skm.mean_pinball_loss(y, upper, alpha=0.9))
    assert interval_pinball(y, lower, upper, level=0.8) == pytest.approx(expected, rel=1e-12)
    assert interval_pinball(y, y, y, level=0.8) == 0.0


def test_coverage_counts_the_closed_band():
    y = np.arange(10.0)
    assert coverage(y, np.full(10, 2.0), np.full(10, 6.0)) == pytest.approx(0.5)


def test_gaussian_nll_matches_scipy_logpdf(sample):
    y, pred = sample
    std = np.linspace(0.5, 1.5, len(y))
    assert gaussian_nll(y, pred, std) == pytest.approx(-np.mean(sps.norm.logpdf(y, pred, std)), rel=1e-12)


def test_empty_and_constant_targets_give_nan():
    assert np.isnan(rmse([], [])) and np.isnan(mae([], [])) and np.isnan(r2([], []))
    assert np.isnan(r2(np.ones(5), np.zeros(5)))


def test_prediction_scores_follow_what_the_prediction_holds(sample):
    y, pred = sample
    assert set(prediction_scores(y, {"mean": pred})) == {"rmse", "mae", "r2"}
    band = prediction_scores(y, {"mean": pred, "lower": pred - 1, "upper": pred + 1, "level": 0.8})
    assert band["level"] == 0.8 and band["coverage"] == coverage(y, pred - 1, pred + 1)
    assert band["pinball"] == interval_pinball(y, pred - 1, pred + 1, level=0.8)
    assert prediction_scores(y, {"mean": pred, "lower": pred - 1, "upper": pred + 1})["level"] == 0.9
    assert prediction_scores(y, {"mean": pred, "std": np.ones(len(y))})["nll"] == gaussian_nll(y, pred, np.ones(len(y)))

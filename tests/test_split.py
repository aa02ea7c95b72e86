"""The time split: earliest months train, then validation, then test; never random."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from bondexp.data.split import expanding_folds, latest_months, month_blocks, month_counts, month_holdout, split_by_date
from bondexp.errors import ConfigError


def shuffled_dates(n_months=10, per_month=7, seed=0):
    months = np.datetime64("2020-01", "M") + np.arange(n_months)
    days = (np.repeat(months, per_month) + 1).astype("datetime64[D]") - np.timedelta64(1, "D")
    return np.random.default_rng(seed).permutation(days)


def test_parts_are_ordered_by_month_and_cover_every_row():
    dates = shuffled_dates()
    parts = split_by_date(dates, train=0.6, validation=0.2, test=0.2)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(len(dates)))
    months = {name: np.unique(dates[index].astype("datetime64[M]")) for name, index in parts.items()}
    assert [len(months[name]) for name in ("train", "validation", "test")] == [6, 2, 2]
    assert months["train"].max() < months["validation"].min() <= months["validation"].max() < months["test"].min()
    for index in parts.values():
        assert np.all(np.diff(index) > 0)


def test_dates_within_a_month_stay_together():
    dates = np.array(["2020-01-03", "2020-01-30", "2020-02-14", "2020-03-01", "2020-03-31"], dtype="datetime64[D]")
    parts = split_by_date(dates, train=1 / 3, validation=1 / 3, test=1 / 3)
    assert [p.tolist() for p in parts.values()] == [[0, 1], [2], [3, 4]]


def test_month_counts_round_cumulative_cuts():
    assert month_counts(72, train=0.6, validation=0.2, test=0.2) == (43, 15, 14)
    assert month_counts(36, train=0.6, validation=0.2, test=0.2) == (22, 7, 7)


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ({"train": 0.7, "validation": 0.2, "test": 0.2}, "must sum to 1"),
        ({"train": 1.0, "validation": 0.0, "test": 0.0}, "'data.split.validation' config key must be a fraction > 0. Got 0.0"),
        ({"train": 0.9, "validation": 0.15, "test": -0.05}, "'data.split.test' config key must be a fraction > 0"),
        ({"train": 0.9, "validation": 0.05, "test": 0.05}, "leave the ['test'] part(s) without any"),
    ],
)
def test_bad_fractions_name_the_key(fractions, message):
    with pytest.raises(ConfigError) as info:
        split_by_date(shuffled_dates(n_months=5), **fractions)
    assert message in str(info.value)


def _months_of(dates, rows):
    return set(np.asarray(dates)[rows].astype("datetime64[M]").tolist())


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.25, 0.5, 0.9])
def test_month_holdout_takes_the_latest_whole_months(fraction):
    dates = shuffled_dates(n_months=12, per_month=5)
    fit, held = month_holdout(dates, fraction=fraction)
    assert len(fit) + len(held) == len(dates) and len(np.intersect1d(fit, held)) == 0
    assert max(_months_of(dates, fit)) < min(_months_of(dates, held))  # no month on both sides, later months held out
    assert abs(len(held) / len(dates) - fraction) <= 0.5 / 12 + 1e-9 or len(_months_of(dates, fit)) == 1


def test_month_holdout_keeps_a_month_each_side_and_checks_its_input():
    dates = shuffled_dates(n_months=3, per_month=4)
    assert len(_months_of(dates, month_holdout(dates, fraction=0.01)[1])) == 1
    assert len(_months_of(dates, month_holdout(dates, fraction=0.99)[0])) == 1
    with pytest.raises(ValueError, match="at least two months"):
        month_holdout(shuffled_dates(n_months=1), fraction=0.5)
    with pytest.raises(ValueError, match="must be in \\(0, 1\\)"):
        month_holdout(dates, fraction=1.0)


def test_without_dates_each_row_is_its_own_month():
    fit, held = month_holdout(np.arange(100), fraction=0.1)
    assert fit.tolist() == list(range(90)) and held.tolist() == list(range(90, 100))


def test_latest_months_stay_within_the_row_budget():
    dates = shuffled_dates(n_months=10, per_month=7)
    rows = latest_months(dates, max_rows=30)
    assert len(rows) == 28 and _months_of(dates, rows) == _months_of(np.sort(dates), np.arange(70 - 28, 70))
    assert len(latest_months(dates, max_rows=3)) == 7  # never less than one month
    assert len(latest_months(dates, max_rows=3, min_months=4)) == 28  # the folds' months, whatever they hold
    assert len(latest_months(dates, max_rows=3, min_months=40)) == 70  # all there are


def test_expanding_folds_train_on_the_past_and_never_split_a_month():
    dates = shuffled_dates(n_months=12, per_month=5)
    folds = expanding_folds(dates, n_folds=3)
    assert len(folds) == 3
    for train, val in folds:
        assert max(_months_of(dates, train)) < min(_months_of(dates, val))
    assert all(len(a[0]) < len(b[0]) for a, b in pairwise(folds))


def test_month_blocks_cover_every_row_in_time_order():
    dates = np.sort(shuffled_dates(n_months=10, per_month=3))
    block = month_blocks(dates, n_blocks=5)
    assert block.tolist() == sorted(block.tolist()) and set(block.tolist()) == set(range(5))
    with pytest.raises(ValueError, match="cannot fill 11 blocks"):
        month_blocks(dates, n_blocks=11)
    with pytest.raises(ConfigError, match="'models.automl.n_folds' config key must leave every fold at least one month"):
        expanding_folds(dates, n_folds=10, key="models.automl.n_folds")

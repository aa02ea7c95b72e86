"""The time split: earliest months train, then validation, then test; never random."""

from __future__ import annotations

import numpy as np
import pytest

from bondexp.data.split import month_counts, split_by_date
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

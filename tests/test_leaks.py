"""The production feature builder cannot see a row's own price, and no oracle column reaches a model.

These tests perturb the synthetic market itself and run :func:`compute_features` on it, so a
feature derived from the observation's own market price (its yield, its price over par) or from
an ``oracle_*`` column would show as a changed feature value.
"""

from __future__ import annotations

import numpy as np
import pytest

from bondexp.bondtable import BondTable
from bondexp.data import Market
from bondexp.data.synthetic import generate_market
from bondexp.errors import ConfigError
from bondexp.feature_names import FEATURES
from bondexp.features import compute_features


@pytest.fixture(scope="module")
def market() -> Market:
    return generate_market(n_observations=1500, n_months=36, seed=3, n_sectors=4)


def _with_columns(market: Market, **columns) -> Market:
    data = {name: np.array(market.bonds[name]) for name in market.bonds.columns}
    data.update(columns)
    return Market(bonds=BondTable(data, market.bonds.sectors), curves=market.curves)


def _row_with_a_later_observation(market: Market) -> tuple[int, int]:
    """A row and the next observation of the same bond (rows are sorted by date, then bond)."""
    bond_id, obs = market.bonds["bond_id"], market.bonds["obs_date"]
    for i in range(len(bond_id) // 2, len(bond_id)):
        later = np.flatnonzero((bond_id == bond_id[i]) & (obs > obs[i]))
        if len(later):
            return i, int(later[np.argmin(obs[later])])
    raise AssertionError("no bond with two observations")


def test_an_observations_own_price_changes_none_of_its_features(market):
    names, X, y, _ = compute_features(market)
    i, j = _row_with_a_later_observation(market)
    price = np.array(market.bonds["clean_price"])
    price[i] += 5.0
    _, X2, y2, _ = compute_features(_with_columns(market, clean_price=price))
    assert y2[i] == pytest.approx(y[i] + 5.0)  # the target moved: the test can see a leak
    changed_rows, changed_cols = np.nonzero(~np.isclose(X, X2, rtol=0, atol=0))
    changed = {(int(r), names[c]) for r, c in zip(changed_rows, changed_cols, strict=True)}
    assert changed == {(j, "prev_residual")}, changed  # only the bond's next observation, through prev_residual
    assert X2[j, names.index("prev_residual")] == pytest.approx(X[j, names.index("prev_residual")] + 5.0)


def test_no_oracle_column_reaches_a_model(market, toy_dataset):
    oracle = [name for name in market.bonds.columns if name.startswith("oracle_")]
    assert oracle and not [name for name in FEATURES if "oracle" in name]
    _, X, _, _ = compute_features(market)
    scrambled = {name: np.random.default_rng(0).permutation(np.array(market.bonds[name])) for name in oracle}
    _, X2, _, meta = compute_features(_with_columns(market, **scrambled))
    np.testing.assert_array_equal(X, X2)  # features do not read oracle columns
    assert set(oracle) <= set(meta)  # they stay in meta, which evaluation alone reads
    with pytest.raises(ConfigError, match="oracle_prediction"):
        toy_dataset.columns(["coupon_rate", "oracle_prediction"])  # a model file cannot ask for one

"""The synthetic market and its curves: determinism, realism, drift, the oracle, load_market."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from bondexp.bondtable import validate
from bondexp.curves import CurveTable
from bondexp.data import data_fingerprint, load_market
from bondexp.data.split import split_by_date
from bondexp.data.synthetic import NS_TAU, PERSISTENT_SD, PHI, SECTOR_SHOCK_SD, generate_market
from bondexp.errors import ConfigError, DataValidationError

CONF = "conf/data/{}.yaml"
SMALL = dict(n_observations=3000, n_months=36, seed=7)
MEDIUM = dict(n_observations=20000, n_months=60, seed=0)
PARTS = ("oracle_adjustment", "oracle_persistent", "oracle_sector_shock", "oracle_noise")
SPLIT = {"train": 0.6, "validation": 0.2, "test": 0.2}


@pytest.fixture(scope="module")
def small():
    return {drift: generate_market(**SMALL, drift=drift) for drift in (True, False)}


@pytest.fixture(scope="module")
def medium():
    return {drift: generate_market(**MEDIUM, drift=drift) for drift in (True, False)}


def residual(bonds):
    return sum(bonds[name] for name in PARTS)


def month_regimes(bonds):
    """(sorted months, regime of each month)."""
    months, first = np.unique(bonds["obs_date"], return_index=True)
    return months, bonds["oracle_regime"][first]


def test_same_seed_same_market_other_seed_other_market(small):
    again = generate_market(**SMALL, drift=True)
    for name in small[True].bonds.columns:
        np.testing.assert_array_equal(again.bonds[name], small[True].bonds[name], err_msg=name)
    np.testing.assert_array_equal(again.curves.zero_rates, small[True].curves.zero_rates)
    other = generate_market(**{**SMALL, "seed": 8}, drift=True)
    assert not np.array_equal(other.bonds["clean_price"][:100], small[True].bonds["clean_price"][:100])


def test_shapes_dtypes_and_validity(small):
    market = small[True]
    bonds = market.bonds
    assert len(bonds) == SMALL["n_observations"]
    assert {"oracle_regime", "oracle_noise_scale", "oracle_adjustment", "oracle_prediction"} <= set(bonds.columns)
    assert bonds["obs_date"].dtype == np.dtype("datetime64[D]") and bonds["rating"].dtype == np.int8
    assert len(np.unique(bonds["obs_date"])) == SMALL["n_months"] == len(market.curves.dates)
    table, dropped = validate(bonds)  # the generator's rows pass the loaders' validation untouched
    assert dropped == {} and np.array_equal(table["clean_price"], bonds["clean_price"])
    years = (bonds["maturity_date"] - bonds["issue_date"]).astype(float) / 365.25
    assert years.min() > 0.99 and years.max() < 30.01
    assert set(np.unique(bonds["frequency"])) == {1, 2, 4, 12} and np.mean(bonds["frequency"] == 2) > 0.5
    assert np.all(bonds["coupon_rate"] >= 0) and 0.005 < np.median(bonds["coupon_rate"]) < 0.08
    counts = np.unique(bonds["bond_id"], return_counts=True)[1]
    assert counts.min() >= 1 and counts.max() <= SMALL["n_months"] and len(set(counts)) > 5  # unbalanced panel


def test_each_bond_is_observed_in_consecutive_months(small):
    bonds = small[False].bonds
    order = np.lexsort((bonds["obs_date"], bonds["bond_id"]))
    months = bonds["obs_date"][order].astype("datetime64[M]").astype(int)
    same_bond = np.diff(bonds["bond_id"][order]) == 0
    assert np.all(np.diff(months)[same_bond] == 1)


@pytest.mark.parametrize("drift", [True, False])
def test_training_months_hold_every_regime(small, drift):
    months, regime = month_regimes(small[drift].bonds)
    n_train = split_by_date(months, **SPLIT)["train"].size
    counts = np.bincount(regime[:n_train], minlength=3)
    assert counts[0] >= 1 and counts[1] >= 8 and counts[2] >= 8


def test_drift_forces_the_test_period_into_stress(medium):
    regimes, spreads = {}, {}
    for drift, market in medium.items():
        months, regime = month_regimes(market.bonds)
        parts = split_by_date(months, **SPLIT)
        regimes[drift] = {name: regime[index] for name, index in parts.items()}
        spreads[drift] = {name: market.curves.market_state()["credit_spread"][index].mean() for name, index in parts.items()}
    assert np.all(regimes[True]["test"] >= 1)
    assert np.any(regimes[False]["test"] == 0)
    np.testing.assert_array_equal(regimes[True]["train"], regimes[False]["train"])  # drift changes only the test period
    assert spreads[True]["test"] > 1.3 * spreads[True]["train"]
    assert spreads[True]["test"] > 1.3 * spreads[False]["test"]
    assert spreads[False]["test"] < 1.3 * spreads[False]["train"]


@pytest.mark.parametrize("drift", [True, False])
def test_oracle_explains_60_to_75_percent(medium, drift):
    bonds = medium[drift].bonds
    r = residual(bonds)
    r2 = 1.0 - np.mean((r - bonds["oracle_prediction"]) ** 2) / np.var(r)
    assert 0.6 <= r2 <= 0.75, r2
    f_only = 1.0 - np.mean((r - bonds["oracle_adjustment"]) ** 2) / np.var(r)
    assert f_only < r2 - 0.02  # the previous residual carries real information


def test_market_price_is_fair_value_plus_the_residual_parts(small):
    market = small[True]
    fair = market.curves.fair_value(market.bonds)["clean_price"]
    np.testing.assert_allclose(market.bonds["clean_price"] - fair, residual(market.bonds), atol=1e-9)
    assert market.bonds["clean_price"].min() > 10


def test_oracle_prediction_follows_its_definition(small):
    bonds = small[True].bonds
    order = np.lexsort((bonds["obs_date"], bonds["bond_id"]))
    prev, now = order[:-1], order[1:]
    linked = np.diff(bonds["bond_id"][order]) == 0
    prev, now = prev[linked], now[linked]
    f, r = bonds["oracle_adjustment"], residual(bonds)
    var = PERSISTENT_SD**2
    shrink = PHI * var / (var + SECTOR_SHOCK_SD[bonds["oracle_regime"][prev]] ** 2 + bonds["oracle_noise_scale"][prev] ** 2)
    np.testing.assert_allclose(bonds["oracle_prediction"][now], f[now] + shrink * (r[prev] - f[prev]), atol=1e-12)
    first = np.setdiff1d(np.arange(len(bonds)), now)
    np.testing.assert_array_equal(bonds["oracle_prediction"][first], f[first])
    lag1 = np.corrcoef(bonds["oracle_persistent"][prev], bonds["oracle_persistent"][now])[0, 1]
    assert 0.7 < lag1 < 0.9


def test_adjustment_is_sensible_and_depends_on_liquidity_and_regime(medium):
    bonds = medium[True].bonds
    f = bonds["oracle_adjustment"]
    assert 0.1 < np.median(np.abs(f)) < 3.0 and np.percentile(np.abs(f), 99) < 10.0
    small_issue = bonds["issue_size"] < np.percentile(bonds["issue_size"], 20)
    large_issue = bonds["issue_size"] > np.percentile(bonds["issue_size"], 80)
    assert f[small_issue].mean() < f[large_issue].mean() - 0.2  # illiquid bonds trade cheap
    calm, crisis = bonds["oracle_regime"] == 0, bonds["oracle_regime"] == 2
    gap = lambda mask: f[mask & large_issue].mean() - f[mask & small_issue].mean()  # noqa: E731
    assert gap(crisis) > 1.5 * gap(calm)  # and the liquidity premium widens in a crisis
    noise = bonds["oracle_noise"] / bonds["oracle_noise_scale"]
    kurtosis = np.mean(noise**4) / np.mean(noise**2) ** 2
    assert 0.9 < noise.std() < 1.1 and kurtosis > 4  # unit variance, heavy tails


def test_curves_follow_nelson_siegel_with_flat_ends(small):
    curves = small[True].curves
    rows = np.arange(len(curves.dates))
    np.testing.assert_allclose(curves.zero_rate(rows, np.full(len(rows), curves.tenors[5])), curves.zero_rates[:, 5])
    # Between grid points the interpolation is close to the smooth curve: rebuild the factors from 3 tenors.
    t = np.array([0.5, 5.0, 25.0])
    u = t / NS_TAU
    loadings = np.stack([np.ones(3), -np.expm1(-u) / u, -np.expm1(-u) / u - np.exp(-u)], axis=1)
    betas = np.linalg.solve(loadings, curves.zero_rate(np.repeat(rows[:1], 3), t))
    t_mid = 7.0 + 1 / 24
    u_mid = t_mid / NS_TAU
    smooth = betas @ [1.0, -np.expm1(-u_mid) / u_mid, -np.expm1(-u_mid) / u_mid - np.exp(-u_mid)]
    assert abs(curves.zero_rate(rows[:1], np.array([t_mid]))[0] - smooth) < 1e-6
    two_d = curves.zero_rate(rows[:2], np.array([[0.0, 100.0], [0.01, 40.0]]))
    np.testing.assert_allclose(
        two_d, [[curves.zero_rates[0, 0], curves.zero_rates[0, -1]], [curves.zero_rates[1, 0], curves.zero_rates[1, -1]]]
    )
    state = curves.market_state()
    assert set(state) == {"curve_level", "curve_slope", "curve_curvature", "credit_spread"}
    assert all(v.shape == (len(rows),) for v in state.values())
    np.testing.assert_allclose(state["curve_level"], curves.zero_rate(rows, np.full(len(rows), 10.0)))


def test_curve_date_index_names_missing_dates(small):
    curves = small[True].curves
    np.testing.assert_array_equal(curves.date_index(curves.dates[[3, 0]]), [3, 0])
    with pytest.raises(DataValidationError, match=r"1 observation date has no curve, e.g. \['2015-02-27'\]"):
        curves.date_index(np.array(["2015-01-31", "2015-02-27"], dtype="datetime64[D]"))
    with pytest.raises(DataValidationError, match="sorted array of unique dates"):
        CurveTable(curves.dates[::-1], curves.tenors, curves.zero_rates, curves.spreads)


def test_load_market_reads_the_presets_and_fingerprints_change():
    cfg = OmegaConf.load(CONF.format("small"))
    market, dropped = load_market(cfg, seed=3)
    assert dropped == {} and len(market.bonds) == cfg.n_observations
    base = data_fingerprint(cfg, seed=3)
    assert len(base) == 64 and base == data_fingerprint(OmegaConf.load(CONF.format("small")), seed=3)
    assert base != data_fingerprint(cfg, seed=4)
    assert base != data_fingerprint({**OmegaConf.to_container(cfg), "drift": False}, seed=3)
    default = OmegaConf.load(CONF.format("synthetic"))
    assert (default.n_observations, default.n_months) == (50000, 72)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"source": "excel"}, "'data.source' config key must be one of ['synthetic', 'csv', 'parquet']. Got 'excel'"),
        ({"n_months": 6}, "'data.n_months' config key must be an int >= 12. Got 6"),
        ({"n_sectors": 11}, "'data.n_sectors' config key must be an int in [1, 10]. Got 11"),
        ({"noise_scale": -1.0}, "'data.noise_scale' config key must be a float >= 0"),
        ({"n_months": 20}, "training months cannot hold 8 months of stress and of crisis"),
        ({"split": {"train": 0.5, "validation": 0.5, "test": 0.0}}, "'data.split.test' config key must be a fraction > 0"),
    ],
)
def test_bad_synthetic_config_names_the_key(override, message):
    cfg = {**OmegaConf.to_container(OmegaConf.load(CONF.format("small"))), **override}
    with pytest.raises(ConfigError) as info:
        load_market(cfg, seed=0)
    assert message in str(info.value)

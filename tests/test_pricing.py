"""bondexp.pricing against QuantLib as the oracle, its monotonicity and round trip, and its errors."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bondexp import cashflows, pricing
from bondexp.errors import PricingError

ql = pytest.importorskip("QuantLib")

QL_FREQUENCY = {1: ql.Annual, 2: ql.Semiannual, 4: ql.Quarterly, 12: ql.Monthly}
ANALYTICS = ("clean_price", "dirty_price", "accrued", "macaulay_duration", "modified_duration", "convexity")


def _qdate(day: np.datetime64) -> "ql.Date":
    return ql.DateParser.parseISO(str(day))


def _ql_bond(bonds: dict, i: int):
    """QuantLib FixedRateBond with bondexp's conventions, with its day counter and schedule."""
    issue, maturity = _qdate(bonds["issue_date"][i]), _qdate(bonds["maturity_date"][i])
    schedule = ql.Schedule(
        issue,
        maturity,
        ql.Period(QL_FREQUENCY[int(bonds["frequency"][i])]),
        ql.NullCalendar(),
        ql.Unadjusted,
        ql.Unadjusted,
        ql.DateGeneration.Backward,
        True,
    )
    if bonds["day_count"][i] == 0:
        day_count = ql.Thirty360(ql.Thirty360.BondBasis)
    else:
        day_count = ql.ActualActual(ql.ActualActual.ISMA, schedule)
    coupon = [float(bonds["coupon_rate"][i])]
    bond = ql.FixedRateBond(0, 100.0, schedule, coupon, day_count, ql.Unadjusted, 100.0, issue)
    return bond, day_count, schedule


def _month_ends(months: np.ndarray) -> np.ndarray:
    return (months + 1).astype("datetime64[M]").astype("datetime64[D]") - 1


def _random_bonds(n: int, rng: np.random.Generator):
    """Bonds of every frequency and day count, a week to 40 years left, many maturing on the 28th-31st."""
    months = rng.integers(12 * 56, 12 * 96, n).astype("datetime64[M]")
    first = months.astype("datetime64[D]")
    length = (_month_ends(months) - first).astype(int) + 1
    kind = rng.random(n)
    day = np.where(kind < 0.3, length, np.where(kind < 0.6, np.minimum(rng.integers(28, 32, n), length), rng.integers(1, 29, n)))
    maturity = first + day - 1
    life = np.exp(rng.uniform(np.log(7), np.log(40 * 365.25), n)).astype(int)
    settlement = maturity - life
    issue = settlement - (rng.random(n) * rng.choice([0, 40, 400, 4000], n)).astype(int)
    coupon = np.where(rng.random(n) < 0.1, 0.0, rng.uniform(0.0, 0.12, n))
    bonds = {
        "issue_date": issue,
        "maturity_date": maturity,
        "coupon_rate": coupon,
        "frequency": rng.choice([1, 2, 4, 12], n),
        "day_count": rng.integers(0, 2, n),
    }
    return bonds, settlement


def _stub_bonds(rng: np.random.Generator):
    """Issue dates around the month ends 1-25 months before maturities on the 28th-31st.

    These make the short first coupons whose notional reference period QuantLib builds from a
    month end (coupon dates cut to February or April from a maturity on the 28th-30th), notional
    periods that start after the issue date, and bonds with a single coupon.
    """
    maturities = np.array(
        [
            "2031-02-28",
            "2032-02-29",
            "2031-08-28",
            "2031-08-29",
            "2031-08-30",
            "2031-08-31",
            "2031-10-30",
            "2031-05-31",
            "2031-03-29",
            "2031-12-30",
        ],
        dtype="datetime64[D]",
    )
    ends = _month_ends(maturities.astype("datetime64[M]")[:, None] - np.arange(1, 26))
    issue = (ends[:, :, None] + np.array([-2, -1, 0, 1])).reshape(len(maturities), -1)
    maturity = np.repeat(maturities, issue.shape[1])
    issue = issue.reshape(-1)
    n = issue.size
    life = (maturity - issue).astype(int)
    settlement = issue + np.minimum(rng.integers(0, 45, n), life - 1)  # mostly inside the first coupon
    bonds = {
        "issue_date": issue,
        "maturity_date": maturity,
        "coupon_rate": rng.uniform(0.0, 0.1, n),
        "frequency": rng.choice([1, 2, 4, 12], n),
        "day_count": (rng.random(n) < 0.8).astype(int),
    }
    return bonds, settlement


@pytest.fixture(scope="module")
def oracle():
    """Bonds, settlements, yields, and QuantLib's analytics and yields for them (one QuantLib loop)."""
    rng = np.random.default_rng(20240601)
    random_bonds, random_settlement = _random_bonds(2500, rng)
    stub_bonds, stub_settlement = _stub_bonds(rng)
    bonds = {key: np.concatenate([random_bonds[key], stub_bonds[key]]) for key in random_bonds}
    settlement = np.concatenate([random_settlement, stub_settlement])
    n = settlement.size
    ytm = rng.uniform(-0.005, 0.15, n)
    on_schedule_date = rng.random(n) < 0.2  # settle on the issue date or on a coupon date
    expected = np.empty((n, len(ANALYTICS)))
    ql_yield = np.empty(n)
    for i in range(n):
        bond, day_count, schedule = _ql_bond(bonds, i)
        if on_schedule_date[i]:
            dates = list(schedule)[:-1]
            settlement[i] = np.datetime64(dates[rng.integers(len(dates))].ISO())
        day = _qdate(settlement[i])
        ql.Settings.instance().evaluationDate = day
        frequency = QL_FREQUENCY[int(bonds["frequency"][i])]
        rate = ql.InterestRate(float(ytm[i]), day_count, ql.Compounded, frequency)
        clean = ql.BondFunctions.cleanPrice(bond, rate, day)
        accrued = bond.accruedAmount(day)
        expected[i] = (
            clean,
            clean + accrued,
            accrued,
            ql.BondFunctions.duration(bond, rate, ql.Duration.Macaulay, day),
            ql.BondFunctions.duration(bond, rate, ql.Duration.Modified, day),
            ql.BondFunctions.convexity(bond, rate, day),
        )
        price = ql.BondPrice(clean, ql.BondPrice.Clean)
        ql_yield[i] = ql.BondFunctions.bondYield(bond, price, day_count, ql.Compounded, frequency, day, 1e-13, 200)
    return bonds, settlement, ytm, expected, ql_yield


def test_oracle_sample_holds_the_hard_cases(oracle):
    """The comparisons are only as good as their sample: check it holds what it should."""
    bonds, settlement, _, expected, _ = oracle
    maturity = bonds["maturity_date"]
    day = (maturity - maturity.astype("datetime64[M]").astype("datetime64[D]")).astype(int) + 1
    assert len(maturity) >= 2000
    assert {29, 30, 31} <= set(day.tolist())
    assert (maturity == _month_ends(maturity.astype("datetime64[M]"))).sum() > 300
    assert ((maturity - settlement).astype(int) < 60).sum() > 20
    assert ((maturity - settlement).astype(int) > 39 * 365).sum() > 5
    assert (settlement == bonds["issue_date"]).sum() > 100
    assert (expected[:, 2] == 0).sum() > 300  # settled on the issue date or a coupon date
    assert set(bonds["frequency"].tolist()) == {1, 2, 4, 12}


def test_price_from_yield_matches_quantlib(oracle):
    bonds, settlement, ytm, expected, _ = oracle
    got = pricing.price_from_yield(bonds, settlement, ytm)
    for column, key in enumerate(ANALYTICS):
        if key == "convexity":
            np.testing.assert_allclose(got[key], expected[:, column], rtol=1e-6, atol=0, err_msg=key)
        else:
            np.testing.assert_allclose(got[key], expected[:, column], rtol=0, atol=1e-8, err_msg=key)
    np.testing.assert_array_equal(pricing.accrued_interest(bonds, settlement), got["accrued"])


def test_yield_from_price_matches_quantlib(oracle):
    bonds, settlement, ytm, expected, ql_yield = oracle
    got = pricing.yield_from_price(bonds, settlement, expected[:, 0])
    # No time left in the day count: any yield gives the price; QuantLib returns its guess, bondexp NaN.
    timeless = expected[:, 3] == 0
    assert np.isnan(got[timeless]).all()
    np.testing.assert_allclose(got[~timeless], ql_yield[~timeless], rtol=0, atol=1e-10)
    np.testing.assert_allclose(got[~timeless], ytm[~timeless], rtol=0, atol=1e-10)


def test_price_from_curve_matches_quantlib():
    rng = np.random.default_rng(7)
    n = 300
    bonds, settlement = _random_bonds(n, rng)
    spread = rng.uniform(-0.002, 0.05, n)
    knot_days = np.array([0, 30, 182, 365, 730, 1826, 3652, 7305, 10957, 21915])
    knots = knot_days / 365.0  # ACT/365 Fixed years, as QuantLib's ZeroCurve measures its dates
    rates = np.array([0.01, 0.012, 0.015, 0.02, 0.024, 0.03, 0.034, 0.037, 0.036, 0.035])
    got = pricing.price_from_curve(bonds, settlement, lambda rows, t: np.interp(t, knots, rates), spread)
    expected = np.empty((n, 3))
    for i in range(n):
        bond, _, _ = _ql_bond(bonds, i)
        day = _qdate(settlement[i])
        ql.Settings.instance().evaluationDate = day
        dates = [day + int(k) for k in knot_days]
        curve = ql.ZeroCurve(dates, rates.tolist(), ql.Actual365Fixed(), ql.NullCalendar(), ql.Linear(), ql.Continuous)
        spreaded = ql.ZeroSpreadedTermStructure(
            ql.YieldTermStructureHandle(curve), ql.QuoteHandle(ql.SimpleQuote(float(spread[i]))), ql.Continuous
        )
        bond.setPricingEngine(ql.DiscountingBondEngine(ql.YieldTermStructureHandle(spreaded)))
        expected[i] = bond.cleanPrice(), bond.dirtyPrice(), bond.accruedAmount()
    for column, key in enumerate(("clean_price", "dirty_price", "accrued")):
        np.testing.assert_allclose(got[key], expected[:, column], rtol=0, atol=1e-8, err_msg=key)


def test_chunks_change_nothing_and_the_curve_is_told_its_rows(monkeypatch):
    rng = np.random.default_rng(11)
    n = 400
    bonds, settlement = _random_bonds(n, rng)
    ytm = rng.uniform(0.0, 0.1, n)
    level = rng.uniform(0.0, 0.06, n)  # one flat curve per bond: wrong rows give wrong prices

    def flat(rows, t):
        return np.broadcast_to(level[rows][:, None], t.shape)

    def run():
        return pricing.price_from_yield(bonds, settlement, ytm), pricing.price_from_curve(bonds, settlement, flat, 0.01)

    whole = run()
    monkeypatch.setattr(cashflows, "CHUNK_CELLS", 500)
    chunked = run()
    for one, other in zip(whole, chunked, strict=True):
        for key in one:
            np.testing.assert_allclose(one[key], other[key], rtol=1e-14, atol=1e-12, err_msg=key)
    for i in range(0, n, 37):  # each bond alone, with its own curve
        alone = {key: column[[i]] for key, column in bonds.items()}
        price = pricing.price_from_curve(alone, settlement[i], lambda rows, t, rate=level[i]: np.full(t.shape, rate), 0.01)
        np.testing.assert_allclose(price["clean_price"][0], chunked[1]["clean_price"][i], rtol=0, atol=1e-12)


def test_inputs_in_every_accepted_form_agree():
    bonds = {
        "issue_date": np.array(["2020-03-31", "2021-01-15"], dtype="datetime64[D]"),
        "maturity_date": np.array(["2030-09-30", "2026-01-15"], dtype="datetime64[D]"),
        "coupon_rate": np.array([0.04, 0.0]),
        "frequency": np.array([2, 1]),
        "day_count": np.array(["ACT/ACT", "30/360"]),
    }
    coded = dict(bonds, day_count=np.array([1, 0], dtype=np.int8))
    day = np.datetime64("2024-02-29")
    scalar = pricing.price_from_yield(bonds, day, 0.05)
    arrays = pricing.price_from_yield(coded, np.array([day, day]), np.array([0.05, 0.05]))
    for key in ANALYTICS:
        np.testing.assert_array_equal(scalar[key], arrays[key])
    empty = pricing.price_from_yield({k: v[:0] for k, v in bonds.items()}, day, 0.05)
    assert all(v.shape == (0,) for v in empty.values())


@st.composite
def bond_and_yields(draw):
    """One bond (as length-1 columns), a settlement date, and a sorted set of distinct yields."""
    issue = np.datetime64("2020-01-01") + draw(st.integers(0, 3650))
    settlement = issue + draw(st.integers(0, 2000))
    maturity = settlement + draw(st.integers(1, 40 * 366))
    bond = {
        "issue_date": np.array([issue]),
        "maturity_date": np.array([maturity]),
        "coupon_rate": np.array([draw(st.floats(0.0, 0.15))]),
        "frequency": np.array([draw(st.sampled_from(pricing.FREQUENCIES))]),
        "day_count": np.array([draw(st.sampled_from(pricing.DAY_COUNTS))]),
    }
    yields = draw(st.lists(st.floats(-0.02, 0.3), min_size=2, max_size=8, unique=True))
    return bond, settlement, np.sort(yields)


@settings(max_examples=150, deadline=None)
@given(bond_and_yields())
def test_price_strictly_falls_as_yield_rises(case):
    bond, settlement, yields = case
    yields = yields[np.diff(yields, prepend=-np.inf) > 1e-6]
    bonds = {key: np.repeat(column, yields.size) for key, column in bond.items()}
    analytics = pricing.price_from_yield(bonds, settlement, yields)
    assume(analytics["macaulay_duration"][0] > 0)  # else no time is left and the price is the cash flow
    assert np.all(np.diff(analytics["clean_price"]) < 0)


@settings(max_examples=150, deadline=None)
@given(bond_and_yields())
def test_yield_round_trips_through_price(case):
    bond, settlement, yields = case
    bonds = {key: np.repeat(column, yields.size) for key, column in bond.items()}
    analytics = pricing.price_from_yield(bonds, settlement, yields)
    got = pricing.yield_from_price(bonds, settlement, analytics["clean_price"])
    timeless = analytics["macaulay_duration"] == 0  # the price does not depend on the yield
    assert np.isnan(got[timeless]).all()
    np.testing.assert_allclose(got[~timeless], yields[~timeless], rtol=0, atol=1e-9)


def test_yield_is_nan_when_no_time_is_left_in_the_day_count_and_prices_still_round_trip():
    bonds = {
        "issue_date": np.array(["2020-02-01", "2020-01-31", "2020-02-01"], dtype="datetime64[D]"),
        "maturity_date": np.array(["2030-02-01", "2030-01-31", "2030-02-01"], dtype="datetime64[D]"),
        "coupon_rate": np.full(3, 0.05),
        "frequency": np.full(3, 2),
        "day_count": np.array([0, 0, 1]),
    }
    settlement = np.array(["2030-01-31", "2030-01-30", "2030-01-31"], dtype="datetime64[D]")
    got = pricing.yield_from_price(bonds, settlement, 99.5)
    assert np.isnan(got[:2]).all() and np.isfinite(got[2])
    analytics = pricing.price_from_yield(bonds, settlement, got)
    np.testing.assert_allclose(analytics["dirty_price"][:2], 102.5)
    np.testing.assert_allclose(analytics["clean_price"][2], 99.5)
    assert (analytics["modified_duration"][:2] == 0).all() and (analytics["convexity"][:2] == 0).all()


def _bonds(**changes):
    bonds = {
        "issue_date": np.array(["2020-01-15"] * 4, dtype="datetime64[D]"),
        "maturity_date": np.array(["2030-01-15"] * 4, dtype="datetime64[D]"),
        "coupon_rate": np.full(4, 0.05),
        "frequency": np.full(4, 2),
        "day_count": np.array(["30/360"] * 4),
    }
    for key, (index, value) in changes.items():
        bonds[key] = bonds[key].copy()
        bonds[key][index] = value
    return bonds


SETTLE = np.datetime64("2024-06-01")


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: pricing.price_from_yield(_bonds(maturity_date=([1, 3], "2024-06-01")), SETTLE, 0.05),
            r"maturity_date must be after settlement for 2 bond\(s\); first offending indices: \[1, 3\]",
        ),
        (
            lambda: pricing.price_from_yield(_bonds(issue_date=(2, "2024-06-02")), SETTLE, 0.05),
            r"settlement must not be before issue_date for 1 bond\(s\); first offending indices: \[2\]",
        ),
        (
            lambda: pricing.price_from_yield(_bonds(frequency=(0, 3)), SETTLE, 0.05),
            r"unknown frequency \(expected one of \(1, 2, 4, 12\)\) for 1 bond",
        ),
        (
            lambda: pricing.price_from_yield(_bonds(day_count=(1, "ACT/360")), SETTLE, 0.05),
            r"unknown day_count .* first offending indices: \[1\]",
        ),
        (
            lambda: pricing.price_from_yield(dict(_bonds(), day_count=np.array([0, 1, 2, 0])), SETTLE, 0.05),
            r"unknown day_count .* first offending indices: \[2\]",
        ),
        (lambda: pricing.price_from_yield(_bonds(coupon_rate=(3, -0.01)), SETTLE, 0.05), r"coupon_rate must be finite and >= 0 for 1 bond"),
        (lambda: pricing.price_from_yield(_bonds(issue_date=(0, "NaT")), SETTLE, 0.05), r"issue_date is missing \(NaT\)"),
        (
            lambda: pricing.price_from_yield({k: v for k, v in _bonds().items() if k != "frequency"}, SETTLE, 0.05),
            r"bonds has no column 'frequency'",
        ),
        (
            lambda: pricing.price_from_yield(_bonds(), SETTLE, np.array([0.05, -2.0, 0.05, np.nan])),
            r"ytm must be finite and above -frequency for 2 bond\(s\); first offending indices: \[1, 3\]",
        ),
        (
            lambda: pricing.price_from_yield(_bonds(), np.array([SETTLE] * 3), 0.05),
            r"settlement must be a scalar or one value per bond \(4\); got shape \(3,\)",
        ),
        (
            lambda: pricing.yield_from_price(_bonds(), SETTLE, np.array([100.0, np.inf, 100.0, 100.0])),
            r"clean_price must be finite for 1 bond",
        ),
        (lambda: pricing.yield_from_price(_bonds(), SETTLE, -5.0), r"dirty price \(clean_price \+ accrued\) must be positive for 4 bond"),
        (
            lambda: pricing.yield_from_price(_bonds(), SETTLE, 100.0, tol=0.0),
            r"The 'tol' parameter of yield_from_price must be a float > 0. Got 0.0 instead.",
        ),
        (
            lambda: pricing.yield_from_price(_bonds(), SETTLE, 100.0, max_iter=0),
            r"The 'max_iter' parameter of yield_from_price must be an int >= 1. Got 0 instead.",
        ),
        (
            lambda: pricing.yield_from_price(_bonds(), SETTLE, 60.0, max_iter=1),
            r"yield did not converge within max_iter=1 steps for 4 bond",
        ),
        (
            lambda: pricing.price_from_curve(_bonds(), SETTLE, lambda rows, t: np.zeros(len(rows)), 0.0),
            r"zero_rate must return an array of shape \(4, 12\), like t; got shape \(4,\)",
        ),
        (
            lambda: pricing.price_from_curve(_bonds(), SETTLE, lambda rows, t: np.where(rows[:, None] == 1, np.nan, t), 0),
            r"zero_rate returned a rate that is not finite for 1 bond\(s\); first offending indices: \[1\]",
        ),
        (lambda: pricing.price_from_curve(_bonds(), SETTLE, lambda rows, t: t * 0, np.nan), r"spread must be finite for 4 bond"),
    ],
)
def test_bad_inputs_raise_pricing_error_naming_the_problem(call, message):
    with pytest.raises(PricingError, match=message):
        call()

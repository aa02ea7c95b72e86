"""The synthetic bond market: an unbalanced monthly panel whose residuals have a known structure.

Every model of the suite must have something real to learn, and evaluation needs to know the
best achievable score, so the generator writes down the truth alongside the prices.

The market, month by month
    A Markov chain of regimes (0 calm, 1 stress, 2 crisis) drives a Nelson-Siegel zero curve
    (level, slope, curvature) and a credit-spread factor; each is a mean-reverting (OU/AR(1))
    process whose long-run mean and volatility depend on the regime. Spreads revert fast (0.8 a
    month, as credit markets reprice stress within weeks) and the curve within a few months (0.3),
    so the market state tells the regime, as a desk reads it off the spread. Rating spreads are
    ``base[rating] * exp(beta[rating] * spread_factor)``. The curve is evaluated on a monthly
    tenor grid out to 30 years, so linear interpolation on it is accurate.

The bonds
    Bonds issue at a steady rate over time (from 30 years before the window to its end), with a
    sector, a rating, a maturity of 1-30 years, a frequency (mostly 2), a day count, a lognormal
    issue size (the liquidity proxy) and a coupon near their yield at issue; each is observed at
    every month-end while alive. The panel is cut at ``n_observations`` rows.

Prices
    ``fair value`` is :meth:`CurveTable.fair_value` (the curve plus the rating spread, what a
    desk's valuator computes). ``market clean price = fair value + residual`` with
    ``residual = f(bond, regime) + persistent + sector shock + noise``:

    - ``f`` (``oracle_adjustment``): a liquidity premium (small issues cheap, widening in stress,
      scaled by duration), an extra high-yield discount in stress, sector effects that differ
      by regime, an on-the-run premium for new issues, a premium-coupon discount and a
      flight-to-quality bid for long investment-grade bonds in stress;
    - ``persistent``: a bond-specific AR(1), ``p_t = phi p_{t-1} + sqrt(1 - phi^2) sd_p e_t``,
      stationary with variance ``var_p = sd_p^2`` (``oracle_persistent``);
    - ``sector shock``: one normal draw per sector and month, variance ``var_sector[regime]``
      (``oracle_sector_shock``);
    - ``noise``: Student-t with 4.5 degrees of freedom scaled to unit variance, times
      ``oracle_noise_scale = noise_scale * regime factor * exp(-0.35 * standardized log size)``
      with the log size clipped to two standard deviations (``oracle_noise``).

The oracle
    ``oracle_prediction`` is the best prediction possible when the price is predicted, knowing
    the true regime and the bond's previous residual ``r_prev`` (one month earlier)::

        f + phi * var_p / (var_p + var_sector_prev + var_noise_prev) * (r_prev - f_prev)

    i.e. ``f`` plus the expected persistent component given the previous residual, shrunk by
    the known variances; for a bond's first observation it is ``f`` (the persistent part's
    unconditional mean is 0). ``oracle_regime`` is the month's regime. With the default
    presets the oracle explains 60-75% of the residual's variance.

Drift
    ``drift=True`` forces the test months (the last ``test_fraction`` of the months, as the time
    split counts them) into stress or crisis, through a chain that never returns to calm. In
    both settings the regime path is conditioned so the training months hold at least
    ``min_regime_months`` of stress and of crisis and some calm (of many candidate paths, the
    calmest that qualifies); the training months are the same with and without drift.
    ``drift=False`` leaves the chain at its stationary law and every factor mean-reverting, so
    the test period differs from training only by chance.
"""

from __future__ import annotations

import numpy as np

from bondexp.bondtable import RATINGS, BondTable
from bondexp.curves import CurveTable
from bondexp.data import Market
from bondexp.data.split import month_counts
from bondexp.errors import ConfigError

# Bump bondexp.data.GENERATOR_VERSION whenever a change here alters the generated data.

SECTOR_NAMES = (
    "Financials", "Utilities", "Industrials", "Energy", "Technology",
    "Telecom", "Consumer", "Healthcare", "Materials", "Real Estate",
)  # fmt: skip
START_MONTH = np.datetime64("2015-01", "M")
HISTORY_MONTHS = 360  # months simulated before the window, so seasoned bonds have a coupon

# Regime chain: rows from, columns to (calm, stress, crisis); stationary about (0.59, 0.26, 0.15).
TRANSITION = np.array([[0.92, 0.06, 0.02], [0.15, 0.75, 0.10], [0.05, 0.20, 0.75]])
# The chain of a forced (drift) test period: never calm, and crisis-prone.
FORCED_TRANSITION = np.array([[0.0, 0.70, 0.30], [0.0, 0.65, 0.35], [0.0, 0.20, 0.80]])
N_CHAINS = 4096  # candidate regime paths drawn at once (see _regime_path)

# Market factors as monthly OU processes: long-run mean and volatility per regime, speed.
FACTORS = ("level", "slope", "curvature", "spread")
FACTOR_MEAN = np.array([[0.035, 0.030, 0.022], [-0.015, -0.020, -0.028], [0.0, -0.005, -0.010], [0.0, 0.60, 1.20]])
FACTOR_VOL = np.array([[0.0015, 0.0025, 0.0040], [0.0010, 0.0018, 0.0030], [0.0020, 0.0030, 0.0045], [0.05, 0.12, 0.20]])
# Speeds: credit spreads gap into stress within a month or two (0.8), rates follow over a few months
# (0.3). Slower speeds leave a calm month after a crisis looking stressed, and regimes unidentifiable.
# Spread volatility quadruples from calm to crisis (5% to 20% a month), as credit markets' does.
FACTOR_SPEED = np.array([0.30, 0.30, 0.30, 0.80])
NS_TAU = 2.0  # Nelson-Siegel decay (years)
TENORS = np.arange(1, 361) / 12.0  # curve grid: monthly to 30 years
SPREAD_BASE = np.array([0.0030, 0.0050, 0.0080, 0.0130, 0.0250, 0.0400, 0.0800])
SPREAD_BETA = np.array([0.80, 0.85, 0.90, 1.00, 1.10, 1.20, 1.30])

# Bond universe.
MATURITY_YEARS = np.array([1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 30])
MATURITY_P = np.array([4, 6, 7, 5, 12, 5, 9, 5, 16, 4, 7, 8, 3, 9], dtype=float) / 100
RATING_P = np.array([0.06, 0.14, 0.25, 0.30, 0.13, 0.08, 0.04])
FREQUENCY_VALUES, FREQUENCY_P = np.array([1, 2, 4, 12]), np.array([0.15, 0.65, 0.12, 0.08])
LOG_SIZE_MEAN, LOG_SIZE_SD = np.log(500.0), 0.9  # issue size in millions
LOG_SIZE_BY_RATING = np.array([0.30, 0.25, 0.15, 0.0, -0.20, -0.40, -0.60])

# True adjustment f (price points per 100 face; spreads as decimals, turned into price by duration).
LIQUIDITY_SPREAD = np.array([0.0005, 0.0010, 0.0016])  # at median size (up to twice it for tiny issues), per regime
HIGH_YIELD_SPREAD = np.array([0.0, 0.0006, 0.0016])  # times (rating / CCC)^2, per regime
SECTOR_SPREAD_SD = np.array([0.0004, 0.0008, 0.0015])  # sector effects drawn per regime
NEW_ISSUE_PREMIUM, NEW_ISSUE_YEARS = 0.25, 0.5
PREMIUM_COUPON_DISCOUNT = 0.4
FLIGHT_TO_QUALITY = np.array([0.0, 0.3, 0.6])  # long AAA-A bonds, per regime
DURATION_RATE = 0.06  # duration proxy (1 - exp(-r tau)) / r

# Residual parts other than f.
PHI = 0.8
PERSISTENT_SD = 0.55
SECTOR_SHOCK_SD = np.array([0.08, 0.15, 0.30])
NOISE_REGIME = np.array([1.0, 1.4, 1.9])
NOISE_DOF = 4.5


def generate_market(
    *,
    n_observations: int,
    n_months: int,
    seed: int,
    drift: bool = True,
    n_sectors: int = 8,
    noise_scale: float = 0.35,
    min_regime_months: int = 8,
    train_fraction: float = 0.6,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.2,
):
    """Generate a synthetic market: bonds with market prices and oracle columns, and the curves.

    Parameters
    ----------
    n_observations : int
        Rows of the panel (bond-months), at least 100.
    n_months : int
        Monthly observation dates (month-ends from January 2015), at least 12.
    seed : int
        Seed; the same seed and parameters give the same market.
    drift : bool
        Force the test months into stress or crisis (see the module docstring).
    n_sectors : int
        Number of sectors, 1 to 10.
    noise_scale : float
        Standard deviation (price points) of the unit-variance noise in a calm month for a
        median-size bond.
    min_regime_months : int
        Months of stress and of crisis the training months must hold.
    train_fraction, validation_fraction, test_fraction : float
        The time split's fractions (``data.split``), which fix which months are training and test
        months.

    Returns
    -------
    Market
        ``bonds`` (a BondTable sorted by ``(obs_date, bond_id)`` with ``oracle_*`` columns) and
        ``curves`` (a CurveTable over the ``n_months`` dates).

    Raises
    ------
    ConfigError
        If a parameter is out of range, or no regime path meets the training conditions.
    """
    _check_int("n_observations", n_observations, 100)
    _check_int("n_sectors", n_sectors, 1, 10)
    if not isinstance(noise_scale, (int, float)) or isinstance(noise_scale, bool) or not noise_scale >= 0:
        raise ConfigError(f"The 'data.noise_scale' config key must be a float >= 0. Got {noise_scale!r} instead.")
    n_train, n_test = _train_and_test_months(n_months, min_regime_months, train_fraction, validation_fraction, test_fraction)
    regime_rng, factor_rng, bond_rng, shock_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))

    regime = _regime_path(regime_rng, n_months, n_train, n_test, drift=drift, min_months=min_regime_months)
    factors = _factor_path(factor_rng, regime)
    window = slice(HISTORY_MONTHS, None)
    month_ends = (START_MONTH + np.arange(1, n_months + 1)).astype("datetime64[D]") - np.timedelta64(1, "D")
    spreads = _rating_spreads(factors[:, 3])
    curves = CurveTable(month_ends, TENORS, _nelson_siegel(factors[window, :3], TENORS), spreads[window])

    bonds, first, last = _bond_universe(bond_rng, n_observations, n_months, n_sectors, factors, spreads)
    rows = _panel(first, last, n_observations, n_months)
    columns = {name: values[rows["bond"]] for name, values in bonds.items()}
    columns["obs_date"] = month_ends[rows["month"]]
    fair = curves.fair_value(columns)["clean_price"]

    month_regime = regime[window][rows["month"]]
    parts = _residual_parts(shock_rng, columns, rows, curves, month_regime, n_sectors, noise_scale)
    residual = parts["oracle_adjustment"] + parts["oracle_persistent"] + parts["oracle_sector_shock"] + parts["oracle_noise"]
    columns["clean_price"] = fair + residual
    columns["oracle_regime"] = month_regime.astype(np.int8)
    columns.update(parts)
    columns["oracle_prediction"] = _oracle(parts, residual, rows["prev"], month_regime)
    sectors = tuple(sorted(SECTOR_NAMES[:n_sectors]))  # the order validate() gives names read back from a file
    table = BondTable({name: columns[name] for name in _COLUMN_ORDER}, sectors)
    return Market(bonds=table, curves=curves)


_COLUMN_ORDER = (
    "bond_id", "obs_date", "issue_date", "maturity_date", "coupon_rate", "frequency", "day_count",
    "rating", "sector", "clean_price", "issue_size", "oracle_regime", "oracle_noise_scale",
    "oracle_adjustment", "oracle_persistent", "oracle_sector_shock", "oracle_noise", "oracle_prediction",
)  # fmt: skip


def _train_and_test_months(n_months, min_regime_months, train_fraction, validation_fraction, test_fraction):
    """``(training months, test months)`` of the time split; raise ConfigError when training cannot hold the regimes."""
    _check_int("n_months", n_months, 12)
    _check_int("min_regime_months", min_regime_months, 0)
    n_train, _, n_test = month_counts(n_months, train=train_fraction, validation=validation_fraction, test=test_fraction)
    if n_train < 2 * min_regime_months + 1:
        problem = f"The {n_train} training months cannot hold {min_regime_months} months of stress and of crisis plus calm ones"
        raise ConfigError(f"{problem}; raise data.n_months (now {n_months}) or lower data.min_regime_months.")
    return n_train, n_test


def _check_int(name, value, low, high=None):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"The 'data.{name}' config key must be an int {bound}. Got {value!r} instead.")


def _regime_path(rng, n_months, n_train, n_test, *, drift, min_months):
    """One regime per month (history, then the window).

    Many candidate paths are drawn at once; of those whose training months hold
    ``min_months`` of stress and of crisis and some calm, the least stressed one is kept, so
    the condition distorts the stationary mix as little as it can.
    """
    total = HISTORY_MONTHS + n_months
    stationary = np.linalg.matrix_power(TRANSITION, 500)[0]
    paths = np.empty((N_CHAINS, total), dtype=np.int8)
    paths[:, 0] = rng.choice(3, size=N_CHAINS, p=stationary)
    cumulative = {False: np.cumsum(TRANSITION, axis=1), True: np.cumsum(FORCED_TRANSITION, axis=1)}
    first_test = total - n_test
    for month in range(1, total):
        table = cumulative[drift and month >= first_test]
        draws = rng.random(N_CHAINS)[:, None]
        paths[:, month] = (draws > table[paths[:, month - 1]]).sum(axis=1)
    train = paths[:, HISTORY_MONTHS : HISTORY_MONTHS + n_train]
    counts = np.stack([(train == r).sum(axis=1) for r in range(3)], axis=1)
    ok = (counts[:, 0] >= 1) & (counts[:, 1] >= min_months) & (counts[:, 2] >= min_months)
    if not ok.any():
        raise ConfigError(
            f"No regime path puts {min_months} months of stress and of crisis in the {n_train} training "
            "months; raise data.n_months or lower data.min_regime_months."
        )
    candidates = np.flatnonzero(ok)
    return paths[candidates[np.argmax(counts[candidates, 0])]]  # the most calm months


def _factor_path(rng, regime):
    """(months, 4) OU paths of level, slope, curvature and the log-spread factor."""
    x = np.empty((len(regime), len(FACTORS)))
    x[0] = FACTOR_MEAN[:, regime[0]]
    shocks = rng.standard_normal(x.shape)
    for month in range(1, len(regime)):
        s = regime[month]
        x[month] = x[month - 1] + FACTOR_SPEED * (FACTOR_MEAN[:, s] - x[month - 1]) + FACTOR_VOL[:, s] * shocks[month]
    return x


def _nelson_siegel(factors, tenors):
    """Zero rates (rows of ``factors`` x tenors) from Nelson-Siegel level, slope and curvature."""
    u = np.asarray(tenors, dtype=np.float64) / NS_TAU
    loading = -np.expm1(-u) / u
    level, slope, curvature = (factors[..., i, None] for i in range(3))
    return level + slope * loading + curvature * (loading - np.exp(-u))


def _rating_spreads(spread_factor):
    """(months, ratings) credit spreads from the log-spread factor."""
    return SPREAD_BASE * np.exp(SPREAD_BETA * spread_factor[:, None])


def _bond_universe(rng, n_observations, n_months, n_sectors, factors, spreads):
    """Bonds alive in the window, in random order, enough for ``n_observations`` bond-months.

    Returns the bonds' static columns and, per bond, the first and last window month it is observed.
    """
    kept, rows = [], 0
    while rows < n_observations:
        # Candidates to draw: a generous guess (a candidate lives ~60 window months, if at all); the loop tops up.
        n = int(1.3 * (n_observations - rows) * (HISTORY_MONTHS + n_months) / (n_months * 60.0)) + 1000
        issue_month = rng.integers(-HISTORY_MONTHS, n_months, n)
        years = rng.choice(MATURITY_YEARS, size=n, p=MATURITY_P)
        first, last = np.maximum(issue_month, 0), np.minimum(issue_month + 12 * years - 1, n_months - 1)
        alive = last >= first
        kept.append((issue_month[alive], years[alive]))
        rows += int((last - first + 1)[alive].sum())
    issue_month = np.concatenate([k[0] for k in kept])
    years = np.concatenate([k[1] for k in kept])
    n = len(issue_month)

    rating = rng.choice(len(RATINGS), size=n, p=RATING_P)
    sector_p = rng.dirichlet(np.full(n_sectors, 4.0))
    log_size = LOG_SIZE_MEAN + LOG_SIZE_BY_RATING[rating] + LOG_SIZE_SD * rng.standard_normal(n)
    frequency = rng.choice(FREQUENCY_VALUES, size=n, p=FREQUENCY_P)
    issue_day = rng.integers(0, 27, n)  # day 1-27, so the issue month's end is after the issue date
    issue_date = (START_MONTH + issue_month).astype("datetime64[D]") + issue_day
    maturity_date = (START_MONTH + issue_month + 12 * years).astype("datetime64[D]") + issue_day

    at_issue = issue_month + HISTORY_MONTHS
    zero = _nelson_siegel(factors[at_issue, :3], years[:, None].astype(float))[:, 0]
    yield_cc = zero + spreads[at_issue, rating] + 0.002 * rng.standard_normal(n)
    periodic = frequency * np.expm1(yield_cc / frequency)
    coupon = np.maximum(np.round(periodic * 800.0) / 800.0, 0.0)  # eighths of a percent, never negative
    columns = {
        "bond_id": np.arange(1, n + 1, dtype=np.int64),
        "issue_date": issue_date,
        "maturity_date": maturity_date,
        "coupon_rate": coupon,
        "frequency": frequency.astype(np.int64),
        "day_count": rng.integers(0, 2, n).astype(np.int8),
        "rating": rating.astype(np.int8),
        "sector": rng.choice(n_sectors, size=n, p=sector_p).astype(np.int16),
        "issue_size": np.exp(log_size),
    }
    return columns, np.maximum(issue_month, 0), np.minimum(issue_month + 12 * years - 1, n_months - 1)


def _panel(first, last, n_observations, n_months):
    """Rows of the panel in ``(month, bond)`` order: each row's bond, month and previous row (-1)."""
    length = np.maximum(last - first + 1, 0)
    ends = np.cumsum(length)
    length = np.clip(n_observations - (ends - length), 0, length)  # cut the panel at n_observations
    starts = np.cumsum(length) - length
    bond = np.repeat(np.arange(len(length)), length)
    age = np.arange(len(bond)) - starts[bond]
    month = first[bond] + age
    order = np.argsort(month, kind="stable")  # bond-major rows -> month-major, bonds ascending
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    prev = np.where(age > 0, position[np.maximum(np.arange(len(bond)) - 1, 0)], -1)
    return {
        "bond": bond[order],
        "month": month[order],
        "prev": prev[order],
        "month_start": np.searchsorted(month[order], np.arange(n_months + 1)),
    }


def _residual_parts(rng, columns, rows, curves, regime, n_sectors, noise_scale):
    """The residual's parts: true adjustment f, persistent AR(1), sector shock, noise; and the noise scale."""
    n = len(regime)
    obs = columns["obs_date"]
    tau = (columns["maturity_date"] - obs).astype(np.float64) / 365.25
    age = (obs - columns["issue_date"]).astype(np.float64) / 365.25
    ell = (np.log(columns["issue_size"]) - LOG_SIZE_MEAN) / LOG_SIZE_SD
    rating, sector = columns["rating"].astype(np.int64), columns["sector"].astype(np.int64)
    month = rows["month"]

    sector_spread = SECTOR_SPREAD_SD[:, None] * rng.standard_normal((3, n_sectors))
    duration = -np.expm1(-DURATION_RATE * tau) / DURATION_RATE
    extra_spread = (
        LIQUIDITY_SPREAD[regime] * 2.0 / (1.0 + np.exp(ell))
        + HIGH_YIELD_SPREAD[regime] * (rating / (len(RATINGS) - 1)) ** 2
        + sector_spread[regime, sector]
    )
    market_yield = curves.market_state()["curve_level"][month] + curves.spreads[month, rating]
    long_ig = (rating <= 2) * (tau / 10.0) ** 2 / (1.0 + (tau / 10.0) ** 2)
    adjustment = (
        -100.0 * duration * extra_spread
        + NEW_ISSUE_PREMIUM * np.exp(-age / NEW_ISSUE_YEARS)
        - PREMIUM_COUPON_DISCOUNT * np.tanh((columns["coupon_rate"] - market_yield) / 0.02) * np.minimum(tau, 10.0) / 10.0
        + FLIGHT_TO_QUALITY[regime] * long_ig
    )

    persistent = np.empty(n)
    innovations = PERSISTENT_SD * rng.standard_normal(n)
    prev = rows["prev"]
    for m in range(len(rows["month_start"]) - 1):
        now = slice(rows["month_start"][m], rows["month_start"][m + 1])
        p = prev[now]
        carried = PHI * persistent[np.maximum(p, 0)] + np.sqrt(1.0 - PHI**2) * innovations[now]
        persistent[now] = np.where(p >= 0, carried, innovations[now])

    n_months = len(rows["month_start"]) - 1
    sector_shock = SECTOR_SHOCK_SD[regime] * rng.standard_normal((n_months, n_sectors))[month, sector]
    scale = noise_scale * NOISE_REGIME[regime] * np.exp(-0.35 * np.clip(ell, -2.0, 2.0))
    noise = scale * rng.standard_t(NOISE_DOF, n) / np.sqrt(NOISE_DOF / (NOISE_DOF - 2.0))
    return {
        "oracle_noise_scale": scale,
        "oracle_adjustment": adjustment,
        "oracle_persistent": persistent,
        "oracle_sector_shock": sector_shock,
        "oracle_noise": noise,
    }


def _oracle(parts, residual, prev, regime):
    """f plus the expected persistent part given the bond's previous residual (module docstring)."""
    f = parts["oracle_adjustment"]
    has_prev = prev >= 0
    p = np.maximum(prev, 0)
    var_p = PERSISTENT_SD**2
    shrink = PHI * var_p / (var_p + SECTOR_SHOCK_SD[regime[p]] ** 2 + parts["oracle_noise_scale"][p] ** 2)
    return f + np.where(has_prev, shrink * (residual[p] - f[p]), 0.0)

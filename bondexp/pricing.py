"""Vectorized pricing of fixed-rate bullet bonds that reproduces QuantLib's ``FixedRateBond``.

One job: turn bond terms and a settlement date, plus a yield, a clean price or a discount curve,
into prices and risk figures for many bonds at once, agreeing with QuantLib to 1e-8 per 100 face.

Conventions are those of QuantLib's ``FixedRateBond`` with ``NullCalendar``, ``Unadjusted``
dates, settlement days 0, face and redemption 100, and a ``Schedule`` generated backward from
maturity with the end-of-month rule:

* Coupon dates step back from maturity by whole periods. A maturity on the last day of its month
  puts every coupon date on a month end; any other day is cut to the length of shorter months.
  What is left between the issue date and the earliest coupon date is a short first coupon.
* ``30/360`` is ``Thirty360(BondBasis)``. ``ACT/ACT`` is ``ActualActual(ISMA, schedule)``: a
  regular period is exactly ``1 / frequency`` years, and the short first coupon is measured
  against the notional regular period ending on its payment date (two notional periods when
  that one starts after the issue date), as QuantLib does.
* Yields compound at the coupon frequency over times measured with the bond's own day count,
  stepwise from one cash flow to the next as ``CashFlows::npv`` does. A coupon paid on the
  settlement date counts as paid.

Why a padded matrix: schedules differ in length, so each bond is one row of a
(bonds x remaining cash flows) matrix built with month arithmetic on day serials. Rows are grouped
by their number of remaining cash flows and priced in chunks of one length and at most
:data:`CHUNK_CELLS` cells, which bounds memory for a million 40-year monthly bonds and leaves no
padding, so a bond's figures never depend on the other bonds priced with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import numpy as np

from bondexp.errors import PricingError

#: Day counts bondexp prices; a ``day_count`` column holds these names or their indices.
DAY_COUNTS = ("30/360", "ACT/ACT")
#: Coupon payments per year bondexp prices.
FREQUENCIES = (1, 2, 4, 12)
#: Upper bound on the cells of one chunk's cash-flow matrix (bonds x cash flows).
CHUNK_CELLS = 2_000_000

_COLUMNS = ("issue_date", "maturity_date", "coupon_rate", "frequency", "day_count")
_SHOWN = 5


def _check(bad: np.ndarray, problem: str) -> None:
    """Raise PricingError naming ``problem``, the number of bonds and the first few indices."""
    index = np.flatnonzero(bad)
    if index.size:
        raise PricingError(
            f"{problem} for {index.size} bond(s); first offending indices: {index[:_SHOWN].tolist()}."
        )


class _Dates(NamedTuple):
    """Dates as month index (months since 1970-01), day of month and day serial (days since 1970-01-01)."""

    month: np.ndarray
    day: np.ndarray
    serial: np.ndarray


@dataclass(frozen=True)
class _Calendar:
    """Month lookup tables over the span of a call, so date arithmetic is integer indexing."""

    base: int
    first: np.ndarray  # day serial of each month's first day
    length: np.ndarray  # days in each month

    @classmethod
    def spanning(cls, first_month: int, last_month: int) -> _Calendar:
        months = np.arange(first_month, last_month + 2)
        first = months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)
        return cls(first_month, first[:-1], np.diff(first))

    def month_length(self, month: np.ndarray) -> np.ndarray:
        return self.length[month - self.base]

    def split(self, serial: np.ndarray) -> _Dates:
        month = serial.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)
        return _Dates(month, serial - self.first[month - self.base] + 1, serial)

    def step_back(self, anchor: _Dates, eom: np.ndarray, months: np.ndarray, steps: np.ndarray | int) -> _Dates:
        """``anchor`` moved back ``steps`` periods of ``months`` months, to month ends where ``eom``.

        This is QuantLib's ``NullCalendar().advance(anchor, -steps * tenor, Unadjusted, True)``:
        the day is kept, cut to the target month's length, or set to it for month-end anchors.
        """
        month = anchor.month - steps * months
        length = self.month_length(month)
        day = np.where(eom, length, np.minimum(anchor.day, length))
        return _Dates(month, day, self.first[month - self.base] + day - 1)


def _pick(condition: np.ndarray, a: _Dates, b: _Dates) -> _Dates:
    return _Dates(*(np.where(condition, x, y) for x, y in zip(a, b)))


def _thirty360(start: _Dates, end: _Dates) -> np.ndarray:
    """Day count of QuantLib's ``Thirty360(BondBasis)`` between ``start`` and ``end``."""
    d1 = np.where(start.day == 31, 30, start.day)
    d2 = np.where((end.day == 31) & (d1 >= 30), 30, end.day)
    return 30 * (end.month - start.month) + d2 - d1


@dataclass(frozen=True)
class _Terms:
    """Validated inputs as flat arrays, and the coupon each bond is in at settlement."""

    coupon: np.ndarray
    frequency: np.ndarray
    months: np.ndarray  # months per coupon period
    act: np.ndarray  # True for ACT/ACT, False for 30/360
    maturity: _Dates
    eom: np.ndarray  # maturity on a month end: every coupon date is a month end
    settle: np.ndarray  # day serial
    remaining: np.ndarray  # cash-flow dates after settlement (coupon dates; redemption shares the last)
    coupon_years: np.ndarray  # accrual year fraction of the current coupon
    first_step: np.ndarray  # yield time from settlement to the current coupon's payment
    accrued: np.ndarray  # per 100 face
    calendar: _Calendar

    @property
    def n_bonds(self) -> int:
        return self.coupon.size

    @property
    def timeless(self) -> np.ndarray:
        """One cash flow left and no time to it in the bond's day count, so the yield has no effect.

        This happens in 30/360 between the 30th or 31st and the next 31st or 1st, e.g. settling
        on 31 January for a maturity on 1 February.
        """
        return (self.remaining == 1) & (self.first_step == 0)


def _column(bonds, name: str) -> np.ndarray:
    try:
        values = bonds[name]
    except (KeyError, IndexError, ValueError) as exc:
        raise PricingError(f"bonds has no column {name!r}; pricing reads {_COLUMNS}.") from exc
    return np.asarray(values).reshape(-1)


def _days(values, name: str) -> np.ndarray:
    try:
        days = np.asarray(values).astype("datetime64[D]")
    except (TypeError, ValueError) as exc:
        raise PricingError(f"{name} must hold dates (datetime64[D]); got {np.asarray(values).dtype}.") from exc
    _check(np.isnat(days), f"{name} is missing (NaT)")
    return days.astype(np.int64)


def _per_bond(values, n_bonds: int, name: str, dtype) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise PricingError(f"{name} must be numeric ({np.dtype(dtype)}); got {np.asarray(values).dtype}.") from exc
    if array.ndim > 1 or array.size not in (1, n_bonds):
        raise PricingError(f"{name} must be a scalar or one value per bond ({n_bonds}); got shape {array.shape}.")
    return np.broadcast_to(array.reshape(-1), (n_bonds,))


def _day_count_is_act(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "iuf":
        bad = ~np.isin(values, np.arange(len(DAY_COUNTS)))
    else:
        values = values.astype(str)
        bad = ~np.isin(values, DAY_COUNTS)
    _check(bad, f"unknown day_count (expected one of {DAY_COUNTS} or codes 0-{len(DAY_COUNTS) - 1})")
    return (values == 1) | (values == "ACT/ACT")


def _periods_back(cal: _Calendar, maturity: _Dates, eom, months, date: _Dates, *, strict: bool) -> np.ndarray:
    """Most periods back from maturity whose schedule date is still ``>= date`` (``> date`` if strict)."""
    steps = (maturity.month - date.month) // months
    serial = cal.step_back(maturity, eom, months, steps).serial
    short = serial <= date.serial if strict else serial < date.serial
    return steps - short


def _isma_first_coupon(cal: _Calendar, issue: _Dates, end: _Dates, months, one_coupon, until) -> np.ndarray:
    """ACT/ACT (ISMA, schedule) years from the issue date to ``until`` within a short first coupon.

    QuantLib measures the first coupon ``[issue, end]`` against notional periods: the period
    ending at ``end``, and the one before it when that starts after the issue date (possible
    only when ``end`` is a month end cut from a maturity day that is not). When the bond has only
    this one coupon its last period is irregular too, and QuantLib then replaces the schedule's
    second date by the issue date plus one period (and appends one more period when that falls
    before maturity), so the reference periods are ``[notional, issue + 1 period, ...]``.
    """

    def advance(date: _Dates, steps: int) -> _Dates:
        return cal.step_back(date, date.day == cal.month_length(date.month), months, steps)

    notional = advance(end, 1)
    prior = advance(notional, 1)
    last = advance(issue, -1)
    after = advance(last, -1)
    long = notional.serial > issue.serial
    first = np.where(long, prior.serial, notional.serial)
    second = np.where(one_coupon, last.serial, np.where(long, notional.serial, end.serial))
    third = np.where(long, end.serial, np.where(one_coupon & (last.serial < end.serial), after.serial, second))
    return _isma_piece(issue.serial, until, first, second) + _isma_piece(issue.serial, until, second, third)


def _isma_piece(issue: np.ndarray, until: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """QuantLib's ``yearFractionWithReferenceDates`` for the part of ``[issue, until]`` in ``[start, end]``.

    The coupons per year are guessed from the reference length, as QuantLib does; every
    reference period here is at least a month long, so its branch for periods under 16 days
    never applies. An empty period (``start == end``) contributes nothing.
    """
    days = np.minimum(until, end) - np.maximum(issue, start)
    reference = np.maximum(end - start, 16)
    per_year = np.floor(12.0 / np.floor(12.0 * reference / 365.0 + 0.5) + 0.5)
    return np.where((issue < end) & (until > start), days / (reference * per_year), 0.0)


def _terms(bonds, settlement) -> _Terms:
    """Validate ``bonds`` and ``settlement`` and locate each bond's current coupon."""
    issue_serial = _days(_column(bonds, "issue_date"), "issue_date")
    n_bonds = issue_serial.size
    columns = {name: _column(bonds, name) for name in _COLUMNS[1:]}
    for name, values in columns.items():
        if values.size != n_bonds:
            raise PricingError(
                f"bonds column {name!r} has {values.size} values; issue_date has {n_bonds}."
            )
    maturity_serial = _days(columns["maturity_date"], "maturity_date")
    settle_serial = _per_bond(_days(settlement, "settlement"), n_bonds, "settlement", np.int64)
    coupon = _per_bond(columns["coupon_rate"], n_bonds, "coupon_rate", np.float64)
    frequency = columns["frequency"]
    _check(~np.isin(frequency, FREQUENCIES), f"unknown frequency (expected one of {FREQUENCIES})")
    act = _day_count_is_act(columns["day_count"])
    _check(~(coupon >= 0) | ~np.isfinite(coupon), "coupon_rate must be finite and >= 0")
    _check(maturity_serial <= settle_serial, "maturity_date must be after settlement")
    _check(settle_serial < issue_serial, "settlement must not be before issue_date")

    frequency = frequency.astype(np.int64)
    months = 12 // frequency
    first = issue_serial.min(initial=0).astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)
    last = maturity_serial.max(initial=0).astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)
    cal = _Calendar.spanning(int(first) - 25, int(last) + 25)
    maturity = cal.split(maturity_serial)
    issue, settle = cal.split(issue_serial), cal.split(settle_serial)
    eom = maturity.day == cal.month_length(maturity.month)
    issue_steps = _periods_back(cal, maturity, eom, months, issue, strict=False)
    remaining = _periods_back(cal, maturity, eom, months, settle, strict=True) + 1
    stub = remaining == issue_steps + 1  # settlement inside a short first coupon
    end = cal.step_back(maturity, eom, months, remaining - 1)
    start = _pick(stub, issue, cal.step_back(maturity, eom, months, remaining))

    one_coupon = issue_steps == 0
    act_years = np.where(stub, _isma_first_coupon(cal, issue, end, months, one_coupon, end.serial), 1.0 / frequency)
    act_accrual = np.where(
        stub,
        _isma_first_coupon(cal, issue, end, months, one_coupon, settle_serial),
        (settle_serial - start.serial) / ((end.serial - start.serial) * frequency),
    )
    coupon_years = np.where(act, act_years, _thirty360(start, end) / 360.0)
    accrual_years = np.where(act, act_accrual, _thirty360(start, settle) / 360.0)
    return _Terms(
        coupon=coupon,
        frequency=frequency,
        months=months,
        act=act,
        maturity=maturity,
        eom=eom,
        settle=settle_serial,
        remaining=remaining,
        coupon_years=coupon_years,
        first_step=coupon_years - accrual_years,
        accrued=100.0 * coupon * accrual_years,
        calendar=cal,
    )


def _chunks(remaining: np.ndarray, index: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Bond indices (all, or those in ``index``) in chunks of one schedule length.

    A chunk's cash-flow matrix has no padding, so each bond's sums run over its own cash flows
    alone and its figures do not depend on which other bonds are priced with it: a batch of rows
    reproduces a whole-table run bit for bit (``bondexp.predict`` relies on this). Each chunk
    stays within :data:`CHUNK_CELLS` cells unless one bond alone is longer.
    """
    index = np.arange(remaining.size) if index is None else index
    order = index[np.argsort(remaining[index], kind="stable")]
    for group in np.split(order, np.flatnonzero(np.diff(remaining[order])) + 1):
        size = max(1, CHUNK_CELLS // max(int(remaining[group[0]]), 1)) if group.size else 1
        for start in range(0, group.size, size):
            yield group[start : start + size]


class _Flows(NamedTuple):
    """One chunk's cash flows per 100 face; padding cells have zero amount and zero time."""

    amount: np.ndarray
    time: np.ndarray  # yield time in years of the bond's day count, stepwise from settlement
    paid: np.ndarray  # True where a cash flow is paid, False on padding


def _schedule_dates(terms: _Terms, rows: np.ndarray, steps: np.ndarray) -> _Dates:
    """Schedule dates ``steps`` (one row per bond) periods back from maturity for the bonds ``rows``."""
    maturity = _Dates(*(x[rows][:, None] for x in terms.maturity))
    return terms.calendar.step_back(maturity, terms.eom[rows][:, None], terms.months[rows][:, None], steps)


def _flows(terms: _Terms, rows: np.ndarray) -> _Flows:
    """Cash-flow matrix of the bonds ``rows``: column 0 pays the current coupon, the last paid one redemption too."""
    remaining = terms.remaining[rows]
    n_columns = int(remaining.max())
    paid = np.arange(n_columns) < remaining[:, None]
    years = np.repeat((1.0 / terms.frequency[rows])[:, None], n_columns, axis=1)
    # A regular period is 1/frequency years, except in 30/360 when month ends move the day.
    uneven = np.flatnonzero(~terms.act[rows] & (terms.eom[rows] | (terms.maturity.day[rows] > 28)))
    if uneven.size:
        steps = np.maximum(remaining[uneven, None] - np.arange(n_columns + 1), 0)
        bounds = _schedule_dates(terms, rows[uneven], steps)
        start, end = _Dates(*(x[:, :-1] for x in bounds)), _Dates(*(x[:, 1:] for x in bounds))
        years[uneven] = _thirty360(start, end) / 360.0
    years[:, 0] = terms.coupon_years[rows]
    amount = np.where(paid, (100.0 * terms.coupon[rows])[:, None] * years, 0.0)
    amount[np.arange(rows.size), remaining - 1] += 100.0
    years[:, 0] = terms.first_step[rows]
    time = np.where(paid, np.cumsum(years, axis=1), 0.0)
    return _Flows(amount, time, paid)


def accrued_interest(bonds, settlement) -> np.ndarray:
    """Accrued interest per 100 face at ``settlement``, as QuantLib's ``Bond.accruedAmount``.

    Parameters
    ----------
    bonds : mapping or BondTable
        Columns ``issue_date``, ``maturity_date`` (datetime64[D]), ``coupon_rate`` (decimal),
        ``frequency`` (1, 2, 4 or 12) and ``day_count`` (names in :data:`DAY_COUNTS` or their
        indices).
    settlement : datetime64[D] scalar or array
        One date for all bonds or one per bond.

    Returns
    -------
    ndarray of float64
        Accrued interest of each bond; zero on a coupon date.

    Raises
    ------
    PricingError
        If a bond has an unknown frequency or day count, a negative coupon, a maturity not after
        settlement or a settlement before issue.
    """
    return _terms(bonds, settlement).accrued.copy()


def price_from_yield(bonds, settlement, ytm) -> dict[str, np.ndarray]:
    """Prices and risk figures at a yield compounded at each bond's coupon frequency.

    Parameters
    ----------
    bonds : mapping or BondTable
        Bond terms; see :func:`accrued_interest`.
    settlement : datetime64[D] scalar or array
        One date for all bonds or one per bond.
    ytm : float or array
        Yield to maturity (decimal), compounded ``frequency`` times a year with the bond's day
        count, as QuantLib's ``InterestRate(ytm, day_count, Compounded, frequency)``. It may be
        NaN for a bond whose price does not depend on it (see :func:`yield_from_price`).

    Returns
    -------
    dict of str to ndarray
        ``clean_price``, ``dirty_price`` and ``accrued`` per 100 face; ``macaulay_duration`` and
        ``modified_duration`` in years and ``convexity``, as QuantLib's ``BondFunctions``.

    Raises
    ------
    PricingError
        For bad bond terms (see :func:`accrued_interest`) or a yield that is not finite or not
        above ``-frequency``.

    Examples
    --------
    >>> import numpy as np
    >>> bonds = {"issue_date": np.array(["2020-01-15"], "datetime64[D]"),
    ...          "maturity_date": np.array(["2030-01-15"], "datetime64[D]"),
    ...          "coupon_rate": np.array([0.05]), "frequency": np.array([2]),
    ...          "day_count": np.array(["30/360"])}
    >>> round(float(price_from_yield(bonds, np.datetime64("2020-01-15"), 0.05)["clean_price"][0]), 10)
    100.0
    """
    keys = ("clean_price", "dirty_price", "accrued", "macaulay_duration", "modified_duration", "convexity")
    terms = _terms(bonds, settlement)
    ytm = _per_bond(ytm, terms.n_bonds, "ytm", np.float64)
    ytm = np.where(terms.timeless & np.isnan(ytm), 0.0, ytm)  # what yield_from_price returns there
    _check(~np.isfinite(ytm) | ~(ytm > -terms.frequency), "ytm must be finite and above -frequency")
    out = {key: np.empty(terms.n_bonds) for key in keys}
    for rows in _chunks(terms.remaining):
        amount, time, _ = _flows(terms, rows)
        frequency = terms.frequency[rows]
        base = 1.0 + ytm[rows] / frequency
        value = np.multiply(time, (-frequency * np.log(base))[:, None])
        np.exp(value, out=value)
        value *= amount
        dirty = value.sum(axis=1)
        value *= time
        timed = value.sum(axis=1)
        macaulay = timed / dirty
        curvature = frequency * np.einsum("ij,ij->i", value, time) + timed  # sum of PV * t * (f t + 1)
        out["dirty_price"][rows] = dirty
        out["macaulay_duration"][rows] = macaulay
        out["modified_duration"][rows] = macaulay / base
        out["convexity"][rows] = curvature / (frequency * base * base) / dirty
    out["accrued"] = terms.accrued.copy()
    out["clean_price"] = out["dirty_price"] - terms.accrued
    return out


def yield_from_price(bonds, settlement, clean_price, *, tol=1e-12, max_iter=100) -> np.ndarray:
    """Yield to maturity that reprices each bond to ``clean_price``; the inverse of :func:`price_from_yield`.

    Newton's method runs on all bonds at once on the log of the dirty price against
    ``log(1 + ytm / frequency)``: that function is nearly linear, so a few steps converge from
    any start. A bond whose step leaves the bracket its earlier iterates established, or is not
    finite, bisects that bracket instead.

    Parameters
    ----------
    bonds : mapping or BondTable
        Bond terms; see :func:`accrued_interest`.
    settlement : datetime64[D] scalar or array
        One date for all bonds or one per bond.
    clean_price : float or array
        Clean price per 100 face.
    tol : float, default=1e-12
        A bond has converged when its yield moved by at most ``tol`` in the last step.
    max_iter : int, default=100
        Most steps per bond.

    Returns
    -------
    ndarray of float64
        Yield compounded at each bond's coupon frequency with its own day count. NaN where the
        price does not depend on the yield: one cash flow left, zero years away in the bond's day
        count (30/360 settling on 31 January for a maturity on 1 February, or on the 30th for
        the 31st). :func:`price_from_yield` accepts those NaNs and prices such bonds exactly.

    Raises
    ------
    PricingError
        For bad bond terms (see :func:`accrued_interest`), a price that is not finite or whose
        dirty price is not positive, bad ``tol`` or ``max_iter``, or bonds that did not converge
        within ``max_iter`` steps.
    """
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise PricingError(f"The 'tol' parameter of yield_from_price must be a float > 0. Got {tol!r} instead.")
    if not (isinstance(max_iter, (int, np.integer)) and not isinstance(max_iter, bool) and max_iter >= 1):
        raise PricingError(
            f"The 'max_iter' parameter of yield_from_price must be an int >= 1. Got {max_iter!r} instead."
        )
    terms = _terms(bonds, settlement)
    clean = _per_bond(clean_price, terms.n_bonds, "clean_price", np.float64)
    _check(~np.isfinite(clean), "clean_price must be finite")
    dirty = clean + terms.accrued
    _check(~(dirty > 0), "dirty price (clean_price + accrued) must be positive")

    maturity_years = (terms.maturity.serial - terms.settle) / 365.25
    guess = (100.0 * terms.coupon + (100.0 - clean) / maturity_years) / (0.5 * (100.0 + clean))
    log_base = np.log1p(np.clip(guess, -0.5, 1.0) / terms.frequency)
    out = np.full(terms.n_bonds, np.nan)  # stays NaN where the price does not depend on the yield
    failed = np.zeros(terms.n_bonds, dtype=bool)
    for rows in _chunks(terms.remaining, np.flatnonzero(~terms.timeless)):
        amount, time, _ = _flows(terms, rows)
        frequency = terms.frequency[rows]
        x, failed[rows] = _solve(
            amount, time * frequency[:, None], np.log(dirty[rows]), log_base[rows], frequency,
            tol=tol, max_iter=max_iter,
        )
        out[rows] = frequency * np.expm1(x)
    _check(failed, f"yield did not converge within max_iter={max_iter} steps")
    return out


def _solve(amount, exponent, log_target, x, frequency, *, tol, max_iter) -> tuple[np.ndarray, np.ndarray]:
    """Safeguarded Newton on ``log(sum(amount * exp(-exponent * x))) = log_target`` for every row.

    ``x`` is ``log(1 + ytm / frequency)``, starting at the given guesses. Returns the solutions
    and a mask of the rows that had not converged after ``max_iter`` steps. Converged rows are
    dropped from the working arrays, so later steps cost only what is left.
    """
    x = x.copy()
    active = np.arange(x.size)
    weighted = amount * exponent
    lower = np.full(x.size, -np.inf)  # largest x seen with the price above target
    upper = np.full(x.size, np.inf)  # smallest x seen with the price below target
    for _ in range(max_iter):
        xa = x[active]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            discount = np.multiply(exponent, -xa[:, None])
            np.exp(discount, out=discount)
            price = np.einsum("ij,ij->i", amount, discount)
            gap = np.log(price) - log_target
            newton = xa + gap * price / np.einsum("ij,ij->i", weighted, discount)
        lower = np.where(gap > 0, xa, lower)
        upper = np.where(gap < 0, xa, upper)
        with np.errstate(invalid="ignore"):  # the midpoint of an open bracket is not used
            midpoint = 0.5 * (lower + upper)
        halfway = np.where(np.isinf(upper), lower + 1.0, np.where(np.isinf(lower), upper - 1.0, midpoint))
        step = np.where(gap == 0, xa, np.where((newton > lower) & (newton < upper), newton, halfway))
        x[active] = step
        going = np.abs(frequency * (np.expm1(step) - np.expm1(xa))) > tol
        if not going.all():
            if not going.any():
                return x, np.zeros(x.size, dtype=bool)
            active, amount, exponent, weighted = active[going], amount[going], exponent[going], weighted[going]
            log_target, frequency, lower, upper = log_target[going], frequency[going], lower[going], upper[going]
    failed = np.zeros(x.size, dtype=bool)
    failed[active] = True
    return x, failed


def price_from_curve(
    bonds, settlement, zero_rate: Callable[[np.ndarray, np.ndarray], np.ndarray], spread
) -> dict[str, np.ndarray]:
    """Prices from a zero curve plus a spread: each cash flow discounted at ``exp(-(z(t) + spread) * t)``.

    Parameters
    ----------
    bonds : mapping or BondTable
        Bond terms; see :func:`accrued_interest`.
    settlement : datetime64[D] scalar or array
        One date for all bonds or one per bond; the curve's reference date.
    zero_rate : callable
        ``zero_rate(rows, t)`` with ``rows`` the indices (into the inputs) of one chunk's bonds
        and ``t`` a float array of shape ``(len(rows), n_cash_flows)`` of ACT/365 Fixed years
        from settlement; returns continuously compounded zero rates of the same shape. Cells
        beyond a bond's last cash flow hold ``t = 0`` and their rates are ignored.
    spread : float or array
        Continuously compounded spread added to the zero rate (decimal).

    Returns
    -------
    dict of str to ndarray
        ``clean_price``, ``dirty_price`` and ``accrued`` per 100 face.

    Raises
    ------
    PricingError
        For bad bond terms (see :func:`accrued_interest`), a spread that is not finite, or
        rates of the wrong shape or not finite where a cash flow is paid.
    """
    terms = _terms(bonds, settlement)
    spread = _per_bond(spread, terms.n_bonds, "spread", np.float64)
    _check(~np.isfinite(spread), "spread must be finite")
    dirty = np.empty(terms.n_bonds)
    for rows in _chunks(terms.remaining):
        amount, _, paid = _flows(terms, rows)
        steps = np.maximum(terms.remaining[rows][:, None] - 1 - np.arange(amount.shape[1]), 0)
        days = _schedule_dates(terms, rows, steps).serial - terms.settle[rows][:, None]
        t = np.where(paid, days, 0) / 365.0
        rate = np.asarray(zero_rate(rows, t), dtype=np.float64)
        if rate.shape != t.shape:
            raise PricingError(f"zero_rate must return an array of shape {t.shape}, like t; got shape {rate.shape}.")
        bad = np.zeros(terms.n_bonds, dtype=bool)
        bad[rows] = (paid & ~np.isfinite(rate)).any(axis=1)
        _check(bad, "zero_rate returned a rate that is not finite")
        discount = np.exp(-(np.where(paid, rate, 0.0) + spread[rows][:, None]) * t)
        dirty[rows] = np.einsum("ij,ij->i", amount, discount)
    return {"clean_price": dirty - terms.accrued, "dirty_price": dirty, "accrued": terms.accrued.copy()}

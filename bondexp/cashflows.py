"""Bond terms and cash-flow schedules for :mod:`bondexp.pricing`, as QuantLib's ``FixedRateBond`` builds them.

One job: check many bonds' terms at once and lay out each bond's remaining cash flows (amounts per
100 face and times in years of its day count) at a settlement date, in chunks of one schedule length.

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

Why a padded matrix: schedules differ in length, so each bond is one row of a
(bonds x remaining cash flows) matrix built with month arithmetic on day serials. Rows are grouped
by their number of remaining cash flows and priced in chunks of one length and at most
:data:`CHUNK_CELLS` cells, which bounds memory for a million 40-year monthly bonds and leaves no
padding, so a bond's figures never depend on the other bonds priced with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from bondexp.errors import PricingError

__all__ = [
    "CHUNK_CELLS",
    "DAY_COUNTS",
    "FREQUENCIES",
    "Flows",
    "Terms",
    "bond_terms",
    "check_bonds",
    "chunks",
    "flows",
    "per_bond",
    "schedule_dates",
]


#: Day counts bondexp prices; a ``day_count`` column holds these names or their indices.
DAY_COUNTS = ("30/360", "ACT/ACT")
#: Coupon payments per year bondexp prices.
FREQUENCIES = (1, 2, 4, 12)
#: Upper bound on the cells of one chunk's cash-flow matrix (bonds x cash flows).
CHUNK_CELLS = 2_000_000

_COLUMNS = ("issue_date", "maturity_date", "coupon_rate", "frequency", "day_count")
_SHOWN = 5


def check_bonds(bad: np.ndarray, problem: str) -> None:
    """Raise PricingError naming ``problem``, the number of bonds and the first few indices."""
    index = np.flatnonzero(bad)
    if index.size:
        raise PricingError(f"{problem} for {index.size} bond(s); first offending indices: {index[:_SHOWN].tolist()}.")


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
    return _Dates(*(np.where(condition, x, y) for x, y in zip(a, b, strict=True)))


def _thirty360(start: _Dates, end: _Dates) -> np.ndarray:
    """Day count of QuantLib's ``Thirty360(BondBasis)`` between ``start`` and ``end``."""
    d1 = np.where(start.day == 31, 30, start.day)
    d2 = np.where((end.day == 31) & (d1 >= 30), 30, end.day)
    return 30 * (end.month - start.month) + d2 - d1


@dataclass(frozen=True)
class Terms:
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
    check_bonds(np.isnat(days), f"{name} is missing (NaT)")
    return days.astype(np.int64)


def per_bond(values, n_bonds: int, name: str, dtype) -> np.ndarray:
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
    check_bonds(bad, f"unknown day_count (expected one of {DAY_COUNTS} or codes 0-{len(DAY_COUNTS) - 1})")
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


def bond_terms(bonds, settlement) -> Terms:
    """Validate ``bonds`` and ``settlement`` and locate each bond's current coupon."""
    issue_serial = _days(_column(bonds, "issue_date"), "issue_date")
    n_bonds = issue_serial.size
    columns = {name: _column(bonds, name) for name in _COLUMNS[1:]}
    for name, values in columns.items():
        if values.size != n_bonds:
            raise PricingError(f"bonds column {name!r} has {values.size} values; issue_date has {n_bonds}.")
    maturity_serial = _days(columns["maturity_date"], "maturity_date")
    settle_serial = per_bond(_days(settlement, "settlement"), n_bonds, "settlement", np.int64)
    coupon = per_bond(columns["coupon_rate"], n_bonds, "coupon_rate", np.float64)
    frequency = columns["frequency"]
    check_bonds(~np.isin(frequency, FREQUENCIES), f"unknown frequency (expected one of {FREQUENCIES})")
    act = _day_count_is_act(columns["day_count"])
    check_bonds(~(coupon >= 0) | ~np.isfinite(coupon), "coupon_rate must be finite and >= 0")
    check_bonds(maturity_serial <= settle_serial, "maturity_date must be after settlement")
    check_bonds(settle_serial < issue_serial, "settlement must not be before issue_date")

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
    return Terms(
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


def chunks(remaining: np.ndarray, index: np.ndarray | None = None) -> Iterator[np.ndarray]:
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


class Flows(NamedTuple):
    """One chunk's cash flows per 100 face; padding cells have zero amount and zero time."""

    amount: np.ndarray
    time: np.ndarray  # yield time in years of the bond's day count, stepwise from settlement
    paid: np.ndarray  # True where a cash flow is paid, False on padding


def schedule_dates(terms: Terms, rows: np.ndarray, steps: np.ndarray) -> _Dates:
    """Schedule dates ``steps`` (one row per bond) periods back from maturity for the bonds ``rows``."""
    maturity = _Dates(*(x[rows][:, None] for x in terms.maturity))
    return terms.calendar.step_back(maturity, terms.eom[rows][:, None], terms.months[rows][:, None], steps)


def flows(terms: Terms, rows: np.ndarray) -> Flows:
    """Cash-flow matrix of the bonds ``rows``: column 0 pays the current coupon, the last paid one redemption too."""
    remaining = terms.remaining[rows]
    n_columns = int(remaining.max())
    paid = np.arange(n_columns) < remaining[:, None]
    years = np.repeat((1.0 / terms.frequency[rows])[:, None], n_columns, axis=1)
    # A regular period is 1/frequency years, except in 30/360 when month ends move the day.
    uneven = np.flatnonzero(~terms.act[rows] & (terms.eom[rows] | (terms.maturity.day[rows] > 28)))
    if uneven.size:
        steps = np.maximum(remaining[uneven, None] - np.arange(n_columns + 1), 0)
        bounds = schedule_dates(terms, rows[uneven], steps)
        start, end = _Dates(*(x[:, :-1] for x in bounds)), _Dates(*(x[:, 1:] for x in bounds))
        years[uneven] = _thirty360(start, end) / 360.0
    years[:, 0] = terms.coupon_years[rows]
    amount = np.where(paid, (100.0 * terms.coupon[rows])[:, None] * years, 0.0)
    amount[np.arange(rows.size), remaining - 1] += 100.0
    years[:, 0] = terms.first_step[rows]
    time = np.where(paid, np.cumsum(years, axis=1), 0.0)
    return Flows(amount, time, paid)

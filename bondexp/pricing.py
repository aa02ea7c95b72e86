"""Vectorized pricing of fixed-rate bullet bonds that reproduces QuantLib's ``FixedRateBond``.

One job: turn bond terms and a settlement date, plus a yield, a clean price or a discount curve,
into prices and risk figures for many bonds at once, agreeing with QuantLib to 1e-8 per 100 face.
The schedules and day counts (QuantLib's conventions, listed there) come from :mod:`bondexp.cashflows`.

Yields compound at the coupon frequency over times measured with the bond's own day count,
stepwise from one cash flow to the next as ``CashFlows::npv`` does. A coupon paid on the
settlement date counts as paid.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bondexp.cashflows import (  # DAY_COUNTS and FREQUENCIES re-exported: bondexp.pricing names what it prices
    DAY_COUNTS,
    FREQUENCIES,
    bond_terms,
    check_bonds,
    chunks,
    flows,
    per_bond,
    schedule_dates,
)
from bondexp.errors import PricingError

__all__ = ["DAY_COUNTS", "FREQUENCIES", "accrued_interest", "price_from_curve", "price_from_yield", "yield_from_price"]


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
    return bond_terms(bonds, settlement).accrued.copy()


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
    terms = bond_terms(bonds, settlement)
    ytm = per_bond(ytm, terms.n_bonds, "ytm", np.float64)
    ytm = np.where(terms.timeless & np.isnan(ytm), 0.0, ytm)  # what yield_from_price returns there
    check_bonds(~np.isfinite(ytm) | ~(ytm > -terms.frequency), "ytm must be finite and above -frequency")
    out = {key: np.empty(terms.n_bonds) for key in keys}
    for rows in chunks(terms.remaining):
        amount, time, _ = flows(terms, rows)
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
    bonds, settlement
        As in :func:`price_from_yield`.
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
        raise PricingError(f"The 'max_iter' parameter of yield_from_price must be an int >= 1. Got {max_iter!r} instead.")
    terms = bond_terms(bonds, settlement)
    clean = per_bond(clean_price, terms.n_bonds, "clean_price", np.float64)
    check_bonds(~np.isfinite(clean), "clean_price must be finite")
    dirty = clean + terms.accrued
    check_bonds(~(dirty > 0), "dirty price (clean_price + accrued) must be positive")

    maturity_years = (terms.maturity.serial - terms.settle) / 365.25
    guess = (100.0 * terms.coupon + (100.0 - clean) / maturity_years) / (0.5 * (100.0 + clean))
    log_base = np.log1p(np.clip(guess, -0.5, 1.0) / terms.frequency)
    out = np.full(terms.n_bonds, np.nan)  # stays NaN where the price does not depend on the yield
    failed = np.zeros(terms.n_bonds, dtype=bool)
    for rows in chunks(terms.remaining, np.flatnonzero(~terms.timeless)):
        amount, time, _ = flows(terms, rows)
        frequency = terms.frequency[rows]
        x, failed[rows] = _solve(
            amount,
            time * frequency[:, None],
            np.log(dirty[rows]),
            log_base[rows],
            frequency,
            tol=tol,
            max_iter=max_iter,
        )
        out[rows] = frequency * np.expm1(x)
    check_bonds(failed, f"yield did not converge within max_iter={max_iter} steps")
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


def price_from_curve(bonds, settlement, zero_rate: Callable[[np.ndarray, np.ndarray], np.ndarray], spread) -> dict[str, np.ndarray]:
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
    terms = bond_terms(bonds, settlement)
    spread = per_bond(spread, terms.n_bonds, "spread", np.float64)
    check_bonds(~np.isfinite(spread), "spread must be finite")
    dirty = np.empty(terms.n_bonds)
    for rows in chunks(terms.remaining):
        amount, _, paid = flows(terms, rows)
        steps = np.maximum(terms.remaining[rows][:, None] - 1 - np.arange(amount.shape[1]), 0)
        days = schedule_dates(terms, rows, steps).serial - terms.settle[rows][:, None]
        t = np.where(paid, days, 0) / 365.0
        rate = np.asarray(zero_rate(rows, t), dtype=np.float64)
        if rate.shape != t.shape:
            raise PricingError(f"zero_rate must return an array of shape {t.shape}, like t; got shape {rate.shape}.")
        bad = np.zeros(terms.n_bonds, dtype=bool)
        bad[rows] = (paid & ~np.isfinite(rate)).any(axis=1)
        check_bonds(bad, "zero_rate returned a rate that is not finite")
        discount = np.exp(-(np.where(paid, rate, 0.0) + spread[rows][:, None]) * t)
        dirty[rows] = np.einsum("ij,ij->i", amount, discount)
    return {"clean_price": dirty - terms.accrued, "dirty_price": dirty, "accrued": terms.accrued.copy()}

"""CurveTable: zero curves and credit spreads per observation date, and the fair value they imply.

Synthetic and file data both end up here, so features and fair values never need to know the
data's source. Zero rates are continuously compounded decimals on a tenor grid in years
(ACT/365F); between grid points they are linear in tenor, beyond the ends flat. Spreads are one
decimal per date and rating (zeros when the source has none).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bondexp.bondtable import RATINGS, count_of
from bondexp.errors import DataValidationError
from bondexp.pricing import price_from_curve

#: Tenors (years) that define the market-state summary of a curve.
SHORT_TENOR, MID_TENOR, LONG_TENOR = 0.25, 2.0, 10.0


@dataclass(frozen=True)
class CurveTable:
    """Zero curves and rating spreads, one row per observation date.

    Parameters
    ----------
    dates : ndarray of datetime64[D], shape (D,)
        Sorted, unique curve dates.
    tenors : ndarray of float, shape (K,)
        Strictly increasing tenors in years.
    zero_rates : ndarray of float, shape (D, K)
        Continuously compounded zero rates (decimals).
    spreads : ndarray of float, shape (D, len(RATINGS))
        Credit spread per date and rating (decimals); NaN where the source gives none.

    Raises
    ------
    DataValidationError
        If the shapes disagree, the dates are not sorted and unique, fewer than two tenors or not increasing,
        or a zero rate is not finite.
    """

    dates: np.ndarray
    tenors: np.ndarray
    zero_rates: np.ndarray
    spreads: np.ndarray

    def __post_init__(self):
        dates = np.asarray(self.dates, dtype="datetime64[D]")
        tenors = np.asarray(self.tenors, dtype=np.float64)
        zero_rates = np.asarray(self.zero_rates, dtype=np.float64)
        spreads = np.asarray(self.spreads, dtype=np.float64)
        if dates.ndim != 1 or len(dates) == 0 or np.any(np.diff(dates) <= np.timedelta64(0, "D")):
            raise DataValidationError("Curve dates must be a non-empty, sorted array of unique dates.")
        if tenors.ndim != 1 or len(tenors) < 2 or np.any(np.diff(tenors) <= 0):
            raise DataValidationError(f"Curve tenors must be at least two, strictly increasing. Got {tenors} instead.")
        if zero_rates.shape != (len(dates), len(tenors)) or not np.all(np.isfinite(zero_rates)):
            raise DataValidationError(
                f"Zero rates must be finite with shape (dates, tenors) = {(len(dates), len(tenors))}. Got shape {zero_rates.shape} instead."
            )
        if spreads.shape != (len(dates), len(RATINGS)):
            raise DataValidationError(
                f"Spreads must have shape (dates, ratings) = {(len(dates), len(RATINGS))}. Got {spreads.shape} instead."
            )
        for name, array in (("dates", dates), ("tenors", tenors), ("zero_rates", zero_rates), ("spreads", spreads)):
            array.flags.writeable = False
            object.__setattr__(self, name, array)

    def date_index(self, obs_dates) -> np.ndarray:
        """Row of the curve for each observation date.

        Returns
        -------
        ndarray of int64
            Index into ``dates`` for each element of ``obs_dates``.

        Raises
        ------
        DataValidationError
            If some observation date has no curve; the message names the first missing dates.
        """
        obs_dates = np.asarray(obs_dates, dtype="datetime64[D]")
        index = np.minimum(np.searchsorted(self.dates, obs_dates), len(self.dates) - 1)
        missing = self.dates[index] != obs_dates
        if missing.any():
            absent = np.unique(obs_dates[missing])
            raise DataValidationError(
                f"{count_of(len(absent), 'observation date')} {'has' if len(absent) == 1 else 'have'} no curve, "
                f"e.g. {[str(d) for d in absent[:5]]}; "
                f"the curve covers {len(self.dates)} dates from {self.dates[0]} to {self.dates[-1]}. "
                "Add these dates to the curve file (data.curve_path)."
            )
        return index

    def zero_rate(self, date_idx, t) -> np.ndarray:
        """Zero rates of curve rows ``date_idx`` at times ``t`` (years), linear in tenor, flat outside.

        ``t`` may be 1-D (one time per row) or 2-D (rows x cash flows); the result has its shape.
        """
        date_idx = np.asarray(date_idx)
        t = np.asarray(t, dtype=np.float64)
        left = np.clip(np.searchsorted(self.tenors, t, side="right") - 1, 0, len(self.tenors) - 2)
        t0, t1 = self.tenors[left], self.tenors[left + 1]
        weight = np.clip((t - t0) / (t1 - t0), 0.0, 1.0)
        rows = date_idx.reshape(date_idx.shape + (1,) * (t.ndim - 1))
        z0 = self.zero_rates[rows, left]
        return z0 + weight * (self.zero_rates[rows, left + 1] - z0)

    def past_longest_tenor(self, obs_date, maturity_date) -> str | None:
        """A note when bonds mature after the curve's longest tenor, or None when none does.

        Beyond it :meth:`zero_rate` holds the last rate flat: a curve file that stops at 10 years
        prices a 30-year bond's last 20 years at the 10-year rate. That is a choice the data made
        for the user, so the run's data summary says it instead of pricing silently. A month past it
        does not count: leap days put a 30-year bond 0.02 years past a 30-year tenor on its first day.
        """
        years = (np.asarray(maturity_date) - np.asarray(obs_date)).astype("timedelta64[D]").astype(np.float64) / 365.0
        longest = float(self.tenors[-1])
        beyond = int(np.count_nonzero(years > longest + 1 / 12))
        if not beyond:
            return None
        return (
            f"{beyond:,} of {len(years):,} observations mature after the curve's longest tenor, {longest:g} years "
            f"(the latest {years.max():.1f} years out): their cash flows past it are discounted at the "
            f"{longest:g}-year rate, held flat"
        )

    def spread(self, date_idx, rating_codes) -> np.ndarray:
        """Credit spread of each (curve row, rating code) pair.

        Raises
        ------
        DataValidationError
            If the source gives no spread for some pair (the message names the ratings).
        """
        values = self.spreads[np.asarray(date_idx), np.asarray(rating_codes)]
        if np.isnan(values).any():
            lacking = np.isnan(values)
            ratings = sorted({RATINGS[r] for r in np.asarray(rating_codes)[lacking]})
            dates = [str(d) for d in np.unique(self.dates[np.asarray(date_idx)[lacking]])]
            raise DataValidationError(
                f"The spread file (data.spread_path) gives no spread for ratings {ratings} on "
                f"{count_of(len(dates), 'observation date')}, e.g. {dates[:5]}; add them or remove those bonds."
            )
        return values

    def market_state(self) -> dict[str, np.ndarray]:
        """Summary of each date's market, one value per curve date.

        Returns
        -------
        dict of str to ndarray, each shape (D,)
            ``curve_level``: the 10y zero rate. ``curve_slope``: 10y minus 3m.
            ``curve_curvature``: the butterfly 2 * 2y - 3m - 10y (positive when the belly is
            high). ``credit_spread``: the mean spread over the ratings the source gives, so a
            stress that widens every rating moves it (0 without spreads).
        """
        rows = np.arange(len(self.dates))
        short, mid, long = (self.zero_rate(rows, np.full(len(rows), tenor)) for tenor in (SHORT_TENOR, MID_TENOR, LONG_TENOR))
        given = ~np.isnan(self.spreads)
        credit = np.where(given, self.spreads, 0.0).sum(axis=1) / np.maximum(given.sum(axis=1), 1)
        return {
            "curve_level": long,
            "curve_slope": long - short,
            "curve_curvature": 2.0 * mid - short - long,
            "credit_spread": credit,
        }

    def fair_value(self, bonds) -> dict[str, np.ndarray]:
        """DCF fair value of each observation: its date's zero curve plus its rating's spread.

        Settlement is the observation date, as a desk's valuator would price it that day.

        Returns
        -------
        dict of str to ndarray
            ``clean_price``, ``dirty_price`` and ``accrued`` per 100 face, from
            :func:`bondexp.pricing.price_from_curve`.

        Raises
        ------
        DataValidationError
            If an observation date has no curve or a rating no spread.
        PricingError
            From the pricer, for a bond it cannot price.
        """
        date_idx = self.date_index(bonds["obs_date"])
        spread = self.spread(date_idx, bonds["rating"])
        return price_from_curve(
            bonds,
            bonds["obs_date"],
            lambda rows, t: self.zero_rate(date_idx[rows], t),
            spread,
        )

"""The time split: train on the earliest observation months, validate on the next, test on the last.

Never random: in a panel of monthly observations a random split puts a bond's later prices in
training and its earlier ones in test, which leaks the future into the fit.
"""

from __future__ import annotations

import numpy as np

from bondexp.data import check_split_fractions
from bondexp.errors import ConfigError

PARTS = ("train", "validation", "test")


def month_counts(n_months: int, *, train: float, validation: float, test: float) -> tuple[int, int, int]:
    """How many of ``n_months`` consecutive months each part gets.

    The cut points are the cumulative fractions times ``n_months``, rounded, so the synthetic
    generator and :func:`split_by_date` agree on which months are the test period.

    Returns
    -------
    (n_train, n_validation, n_test) : tuple of int

    Raises
    ------
    ConfigError
        If a fraction is not positive, the fractions do not sum to 1, or a part gets no month.
    """
    fractions = {"train": train, "validation": validation, "test": test}
    check_split_fractions(fractions)
    cuts = np.rint(np.cumsum([train, validation]) * n_months).astype(int)
    counts = (int(cuts[0]), int(cuts[1] - cuts[0]), int(n_months - cuts[1]))
    empty = [name for name, count in zip(PARTS, counts, strict=True) if count == 0]
    if empty:
        raise ConfigError(
            f"The 'data.split' fractions {fractions} leave the {empty} part(s) without any of the "
            f"{n_months} observation months; use more months or larger fractions."
        )
    return counts


def split_by_date(obs_date, *, train: float, validation: float, test: float) -> dict[str, np.ndarray]:
    """Row indices of each part, cut by unique observation month.

    Parameters
    ----------
    obs_date : array-like of datetime64
        Observation date of each row (any order).
    train, validation, test : float
        Fractions of the unique months, each > 0, summing to 1.

    Returns
    -------
    dict of str to ndarray of int64
        ``{"train", "validation", "test"}`` -> sorted row positions; every train month comes
        before every validation month, which comes before every test month.

    Raises
    ------
    ConfigError
        If the fractions are invalid or leave a part without months (key ``data.split``).
    """
    months = np.asarray(obs_date, dtype="datetime64[D]").astype("datetime64[M]")
    unique, month_of_row = np.unique(months, return_inverse=True)
    n_train, n_validation, _ = month_counts(len(unique), train=train, validation=validation, test=test)
    part = np.searchsorted([n_train, n_train + n_validation], month_of_row.reshape(-1), side="right")
    return {name: np.flatnonzero(part == code) for code, name in enumerate(PARTS)}


# ----------------------------------------------------------------------------- holdouts and folds inside a part
#
# Every holdout and fold bondexp cuts inside the training rows (early stopping, the stacking blend,
# AutoML's search, the Bayesian variance model's cross-fitting, tuning) comes from here, and is cut
# between whole months: a month's bonds share its shocks, so a month on both sides of a cut lets a
# model score itself on shocks it was fit on.


def month_labels(obs_date) -> np.ndarray:
    """Each row's month: ``datetime64[M]`` for dates; any other labels are taken as given.

    Integer labels are how callers without dates fall back: ``np.arange(n)`` makes every row its
    own "month", so cuts land at row counts (rows then must already be in time order).
    """
    values = np.asarray(obs_date)
    if np.issubdtype(values.dtype, np.datetime64):
        return values.astype("datetime64[M]")
    return values


def month_holdout(obs_date, *, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into earlier months to fit on and the latest whole months to hold out.

    Parameters
    ----------
    obs_date : array-like
        Each row's observation date (or month label); any row order.
    fraction : float
        Share of the rows the holdout should hold, in (0, 1); the number of latest months whose
        row count is closest to it is taken, and at least one month stays on each side.

    Returns
    -------
    (fit_rows, holdout_rows) : tuple of ndarray of int64
        Sorted row positions; every holdout month is later than every fit month.

    Raises
    ------
    ValueError
        If ``fraction`` is not in (0, 1) or the rows span fewer than two months.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"The holdout 'fraction' must be in (0, 1). Got {fraction!r} instead.")
    months, codes, counts = np.unique(month_labels(obs_date), return_inverse=True, return_counts=True)
    if len(months) < 2:
        raise ValueError(f"A month holdout needs rows from at least two months. Got {len(months)} month(s).")
    held = np.cumsum(counts[::-1])  # rows in the latest 1, 2, ... months
    n_held = int(np.clip(np.argmin(np.abs(held - fraction * counts.sum())) + 1, 1, len(months) - 1))
    holdout = codes.reshape(-1) >= len(months) - n_held
    return np.flatnonzero(~holdout), np.flatnonzero(holdout)


def latest_months(obs_date, *, max_rows: int, min_months: int = 1) -> np.ndarray:
    """Sorted positions of the rows of the latest whole months holding at most ``max_rows`` rows.

    Never fewer than ``min_months`` months (all there are, if fewer), even when those hold more rows.
    """
    months, codes, counts = np.unique(month_labels(obs_date), return_inverse=True, return_counts=True)
    held = np.cumsum(counts[::-1])
    n_held = min(max(int(np.searchsorted(held, max_rows, side="right")), min_months, 1), len(months))
    return np.flatnonzero(codes.reshape(-1) >= len(months) - n_held)


def month_blocks(obs_date, *, n_blocks: int) -> np.ndarray:
    """Block number (0 = earliest) of each row: ``n_blocks`` runs of whole months of about equal row counts.

    Raises
    ------
    ValueError
        If there are fewer months than blocks.
    """
    months, codes, counts = np.unique(month_labels(obs_date), return_inverse=True, return_counts=True)
    middle = np.cumsum(counts) - counts / 2.0
    block_of_month = np.minimum((middle / counts.sum() * n_blocks).astype(int), n_blocks - 1)
    if len(np.unique(block_of_month)) < n_blocks:
        raise ValueError(f"the {len(months)} month(s) given cannot fill {n_blocks} blocks of whole months.")
    return block_of_month[codes.reshape(-1)]


def expanding_folds(obs_date, *, n_folds: int, key: str = "n_folds") -> list[tuple[np.ndarray, np.ndarray]]:
    """Expanding-window folds: ``[(train_rows, validation_rows), ...]``, past months train, the next block scores.

    The months are cut into ``n_folds + 1`` contiguous blocks of about equal row counts (a month
    is never split, so no month is on both sides); fold ``k`` trains on blocks ``0..k`` and is
    scored on block ``k + 1``.

    Raises
    ------
    ConfigError
        Fewer months than blocks (naming the config ``key``).
    """
    try:
        block = month_blocks(obs_date, n_blocks=n_folds + 1)
    except ValueError as exc:
        raise ConfigError(
            f"The '{key}' config key must leave every fold at least one month: {exc} Got {n_folds!r} instead; lower {key}."
        ) from None
    return [(np.flatnonzero(block <= k), np.flatnonzero(block == k + 1)) for k in range(n_folds)]

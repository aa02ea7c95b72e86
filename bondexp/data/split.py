"""The time split: train on the earliest observation months, validate on the next, test on the last.

Never random: in a panel of monthly observations a random split puts a bond's later prices in
training and its earlier ones in test, which leaks the future into the fit.
"""

from __future__ import annotations

import numpy as np

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
    for name, value in fractions.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ConfigError(f"The 'data.split.{name}' config key must be a fraction > 0. Got {value!r} instead.")
    if abs(train + validation + test - 1.0) > 1e-6:
        raise ConfigError(
            f"The 'data.split' fractions must sum to 1. Got {fractions} (sum {train + validation + test:g}) instead."
        )
    cuts = np.rint(np.cumsum([train, validation]) * n_months).astype(int)
    counts = (int(cuts[0]), int(cuts[1] - cuts[0]), int(n_months - cuts[1]))
    empty = [name for name, count in zip(PARTS, counts) if count == 0]
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

"""Model features and the residual target, computed once per data fingerprint and cached on disk.

The target is what the models learn: market clean price minus DCF fair clean price, per 100 face.
No feature reads the observation's own market price (its yield, its price over par, ...) and no
feature reads an ``oracle_*`` column: those would leak the target. The previous observation's
residual of the same bond is allowed; it is known when the prediction is made.

The cache is a ``joblib.Memory`` keyed by the data config, the seed and the data fingerprint, and
it is loaded memory-mapped, so a sweep prices the market once and every worker process shares one
copy of the arrays through the page cache.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from joblib import Memory

from bondexp.errors import ConfigError
from bondexp.feature_names import CATEGORICAL_FEATURES, FEATURES, MARKET_FEATURES

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Dataset:
    """Features, target and row metadata of every observation, with the time split as row indices.

    ``X`` is float64 (rows x ``feature_names``); ``meta`` holds per-row columns that are not
    features: ``obs_date``, ``bond_id``, ``rating``, ``sector``, ``market_price``, ``fair_value`` and,
    for synthetic data, the ``oracle_*`` columns, which evaluation alone may read.
    """

    fingerprint: str
    feature_names: tuple[str, ...]
    X: np.ndarray
    y: np.ndarray
    splits: dict[str, np.ndarray]
    meta: dict[str, np.ndarray]
    sectors: tuple[str, ...] = ()
    dropped: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # what the user should know about how the data was read (the summary prints them)

    @property
    def categorical(self) -> tuple[str, ...]:
        return tuple(n for n in self.feature_names if n in CATEGORICAL_FEATURES)

    @property
    def market_features(self) -> tuple[str, ...]:
        return tuple(n for n in self.feature_names if n in MARKET_FEATURES)

    @property
    def has_oracle(self) -> bool:
        return "oracle_prediction" in self.meta

    def columns(self, features: Sequence[str] | None = None) -> list[int]:
        """Column positions of ``features`` (all when None); raise ConfigError on an unknown name."""
        if features is None:
            return list(range(len(self.feature_names)))
        unknown = [f for f in features if f not in self.feature_names]
        if unknown:
            raise ConfigError(f"Unknown features {unknown}; the dataset has {list(self.feature_names)}.")
        return [self.feature_names.index(f) for f in features]

    def frame(self, split: str, features: Sequence[str] | None = None) -> pd.DataFrame:
        """The ``split`` rows of ``features`` as a DataFrame with named columns (what estimators get)."""
        import pandas as pd  # here: the run's process builds the dataset but never a frame, and pandas is 0.5 s of its start

        cols = self.columns(features)
        names = [self.feature_names[c] for c in cols]
        return pd.DataFrame(np.asarray(self.X[np.ix_(self.splits[split], np.asarray(cols, dtype=np.intp))]), columns=names)

    def target(self, split: str) -> np.ndarray:
        """The residual target of the ``split`` rows."""
        return np.asarray(self.y[self.splits[split]])

    def meta_of(self, split: str, name: str) -> np.ndarray:
        """A metadata column restricted to the ``split`` rows."""
        return np.asarray(self.meta[name][self.splits[split]])


def previous_residual(bond_id: np.ndarray, obs_date: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """Residual of the same bond's previous observation (NaN for its first one)."""
    order = np.lexsort((obs_date, bond_id))
    prev = np.full(len(residual), np.nan)
    same_bond = bond_id[order][1:] == bond_id[order][:-1]
    prev[order[1:][same_bond]] = residual[order[:-1][same_bond]]
    return prev


def _years(later: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    return (later - earlier).astype("timedelta64[D]").astype(np.float64) / 365.25


def compute_features(market) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Price the market and derive ``(feature_names, X, y, meta)``; no caching here."""
    bonds, curves = market.bonds, market.curves
    fair = curves.fair_value(bonds)["clean_price"]
    market_price = np.asarray(bonds["clean_price"], dtype=np.float64)
    residual = market_price - fair
    prev = previous_residual(bonds["bond_id"], bonds["obs_date"], residual)
    issue_size = np.asarray(bonds["issue_size"], dtype=np.float64)
    X = feature_matrix(bonds, curves, fair=fair, prev_residual=prev, issue_size_known=bool(np.isfinite(issue_size).any()))
    meta = {
        "obs_date": bonds["obs_date"],
        "bond_id": bonds["bond_id"],
        "rating": bonds["rating"],
        "sector": bonds["sector"],
        "market_price": market_price,
        "fair_value": fair,
    }
    meta.update({name: bonds[name] for name in bonds.columns if name.startswith("oracle_")})
    return FEATURES, X, residual, meta


def feature_matrix(bonds, curves, *, fair: np.ndarray, prev_residual: np.ndarray, issue_size_known: bool) -> np.ndarray:
    """The ``FEATURES`` columns (float64, rows x features) of any rows: a whole market or one batch.

    Training and ``bondexp.predict`` both call this, so a model sees the same features in both.

    Parameters
    ----------
    bonds : BondTable
        The rows to describe.
    curves : CurveTable
        Curves and spreads covering every row's observation date.
    fair : ndarray
        DCF fair clean price of each row (``curves.fair_value(bonds)["clean_price"]``).
    prev_residual : ndarray
        Residual of the same bond's previous observation, NaN where there is none.
    issue_size_known : bool
        Whether the data gives any issue size; without one ``log_issue_size`` is 0 everywhere
        (decided over the whole data, not per batch).
    """
    from bondexp.pricing import price_from_yield, yield_from_price

    obs = bonds["obs_date"]
    date_idx = curves.date_index(obs)
    ttm = _years(bonds["maturity_date"], obs)
    spread = curves.spread(date_idx, bonds["rating"])
    ytm = yield_from_price(bonds, obs, fair)
    analytics = price_from_yield(bonds, obs, ytm)
    # One cash flow zero day-count years away: the price does not depend on the yield (NaN).
    # The curve's rate to maturity plus the spread stands in, so no row is dropped.
    timeless = ~np.isfinite(ytm)
    if timeless.any():
        ytm[timeless] = curves.zero_rate(date_idx[timeless], ttm[timeless]) + spread[timeless]
    state = curves.market_state()
    issue_size = np.asarray(bonds["issue_size"], dtype=np.float64)
    columns = {
        "coupon_rate": bonds["coupon_rate"],
        "frequency": bonds["frequency"],
        "day_count": bonds["day_count"],
        "rating": bonds["rating"],
        "sector": bonds["sector"],
        "log_issue_size": np.log(np.where(np.isfinite(issue_size) & (issue_size > 0), issue_size, np.nan))
        if issue_size_known
        else np.zeros(len(issue_size)),
        "time_to_maturity": ttm,
        "age": _years(obs, bonds["issue_date"]),
        "fair_value": fair,
        "yield_at_fair": ytm,
        "modified_duration": analytics["modified_duration"],
        "convexity": analytics["convexity"],
        "credit_spread": spread,
        "prev_residual": np.nan_to_num(prev_residual, nan=0.0),
        "has_prev_residual": np.isfinite(prev_residual),
        "curve_level": state["curve_level"][date_idx],
        "curve_slope": state["curve_slope"][date_idx],
        "curve_curvature": state["curve_curvature"][date_idx],
        "market_credit_spread": state["credit_spread"][date_idx],
    }
    X = np.empty((len(bonds), len(FEATURES)), dtype=np.float64)
    for j, name in enumerate(FEATURES):
        X[:, j] = columns[name]
    return X


def _build(data_cfg: dict[str, Any], seed: int, fingerprint: str) -> Dataset:
    """Load, validate, split and price the data (the cached function: its arguments are the key)."""
    from bondexp.data import load_market
    from bondexp.data.split import split_by_date

    market, dropped = load_market(data_cfg, seed=seed)
    names, X, y, meta = compute_features(market)
    splits = split_by_date(meta["obs_date"], **data_cfg["split"])
    return Dataset(
        fingerprint=fingerprint,
        feature_names=names,
        X=X,
        y=y,
        splits=splits,
        meta=meta,
        sectors=tuple(market.bonds.sectors),
        dropped=dict(dropped),
        notes=tuple(n for n in [market.curves.past_longest_tenor(market.bonds["obs_date"], market.bonds["maturity_date"])] if n),
    )


def _memory(cache_dir: str | Path) -> Memory:
    return Memory(location=str(Path(cache_dir).expanduser()), mmap_mode="r", verbose=0)


def load_dataset(
    data_cfg: Mapping[str, Any], *, seed: int, cache_dir: str | Path, fingerprint: str | None = None
) -> tuple[Dataset, dict[str, Any]]:
    """Return ``(dataset, info)``, building it on a cache miss and memory-mapping it on a hit.

    Pass ``fingerprint`` when it is known (workers get it from the parent) to skip hashing the
    data files again. ``info`` says whether the cache was hit and how long loading took.
    """
    from bondexp.data import data_fingerprint

    data_cfg = dict(data_cfg)
    fingerprint = fingerprint or data_fingerprint(data_cfg, seed=seed)
    cached = _memory(cache_dir).cache(_build)
    hit = cached.check_call_in_cache(data_cfg, seed, fingerprint)
    start = time.perf_counter()
    dataset = cached(data_cfg, seed, fingerprint)
    return dataset, {"cache_hit": bool(hit), "seconds": time.perf_counter() - start, "fingerprint": fingerprint}


_LOADED: dict[str, Dataset] = {}


def dataset_for(shared: Mapping[str, Any]) -> Dataset:
    """The run's dataset inside a step, from the cache the parent filled (memoised per process).

    ``shared`` is the run-level dict every step gets as ``ctx.shared``: ``data``, ``seed``,
    ``cache_dir`` and ``data_fingerprint``.
    """
    key = shared["data_fingerprint"]
    if key not in _LOADED:
        _LOADED[key], _ = load_dataset(shared["data"], seed=shared["seed"], cache_dir=shared["cache_dir"], fingerprint=key)
    return _LOADED[key]


_PROVIDED: dict[str, int] = {}  # fingerprint -> steps now running with a dataset the parent sent


@contextlib.contextmanager
def provided_dataset(dataset: Dataset) -> Iterator[None]:
    """Within the block, :func:`dataset_for` returns ``dataset`` (sent by the parent) instead of reading the cache.

    A Dask worker shares no disk with the parent, so the parent scatters the dataset and the
    worker provides it around each step. It is forgotten when the last step using it ends, since
    a worker outlives runs (a worker may run several steps at once, hence the count).
    """
    key = dataset.fingerprint
    _LOADED[key] = dataset
    _PROVIDED[key] = _PROVIDED.get(key, 0) + 1
    try:
        yield
    finally:
        _PROVIDED[key] -= 1
        if not _PROVIDED[key]:
            del _PROVIDED[key]
            _LOADED.pop(key, None)

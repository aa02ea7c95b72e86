"""The new bonds: loaded and validated as a run's data is, coded as the run codes them, predicted batch by batch.

Features come from :func:`bondexp.features.feature_matrix`, the code training uses; only the fair
value, the accrued interest and the previous residual are held for the whole file (three floats
a row), everything else lives for one batch.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bondexp.errors import ConfigError, DataValidationError
from bondexp.predict.runfolder import RunModels
from bondexp.predict.workers import lap, ordered_map

#: Prediction keys that go to the output as they are, as ``<model>_<key>`` (see train.predict_all).
_AS_IS = ("level", "std", "var", "es")


def read_new_bonds(data_cfg: Mapping[str, Any], known_sectors: Sequence[str] | None = None) -> tuple[Any, dict[str, int]]:
    """Load and validate the new file as a run loads its data: ``(market, dropped)``, sectors as the file names them.

    Needs nothing of the run, so :func:`bondexp.predict.app.predict` reads while it opens the run.
    With ``known_sectors`` (the run's), a row of another sector is one more problem among the file's.

    Raises
    ------
    ConfigError, DataValidationError
        As loading a run's data does.
    """
    from bondexp.data import load_market

    check_source(data_cfg)
    return load_market(data_cfg, seed=0, known_sectors=known_sectors)


def check_source(data_cfg: Mapping[str, Any]) -> None:
    """Predict reads files only: ``data.source`` must be csv or parquet, and the bonds and curve files must exist.

    The files first: without them, the spreads' check named ``data.spread_path`` as the first thing missing.
    """
    from bondexp.data import existing_path

    if data_cfg.get("source") not in ("csv", "parquet"):
        raise ConfigError(f"The 'data.source' config key must be 'csv' or 'parquet' for predict. Got {data_cfg.get('source')!r} instead.")
    for key in ("path", "curve_path"):
        existing_path(data_cfg, key)


def load_new_bonds(data_cfg: Mapping[str, Any], run_sectors: Sequence[str], *, read: tuple[Any, dict[str, int]] | None = None):
    """The new file with its sectors coded as the run codes them (read here unless ``read`` is :func:`read_new_bonds`'s result).

    Returns
    -------
    market : Market
    dropped : dict of str to int
        Rows dropped per problem (``data.on_invalid: drop``).
    bond_names : tuple of str or None
        The file's text bond ids by code (None when they are integers).

    Raises
    ------
    ConfigError, DataValidationError
        As :func:`read_new_bonds`; also for sectors the run never saw (unless dropped), and
        observation dates the curve file does not cover (named).
    """
    from bondexp.bondtable import BondTable, count_of
    from bondexp.data import Market
    from bondexp.data.files import bond_id_names

    market, dropped = read if read is not None else read_new_bonds(data_cfg)
    bonds, bond_names = market.bonds, bond_id_names(data_cfg)
    lookup = {name: code for code, name in enumerate(run_sectors)}
    to_run = np.array([lookup.get(name, -1) for name in bonds.sectors], dtype=np.int16)
    unknown = to_run[bonds["sector"]] < 0
    if unknown.any():
        names = sorted({bonds.sectors[c] for c in np.unique(bonds["sector"][unknown])})
        if data_cfg.get("on_invalid", "raise") != "drop":
            raise DataValidationError(
                f"The file {data_cfg['path']} (data.path) has {count_of(int(unknown.sum()), 'row')} of sectors the run's models never "
                f"saw: {names} (column 'sector'; first {_bonds_on_dates(bonds, np.flatnonzero(unknown)[:5], bond_names)}); "
                f"they know {list(run_sectors)}. Fix the data, or set data.on_invalid=drop to drop these rows."
            )
        dropped = {**dropped, "sector unknown to the run": int(unknown.sum())}
        bonds = bonds.take(np.flatnonzero(~unknown))
    if len(bonds) == 0:
        raise DataValidationError(f"The file {data_cfg['path']} (data.path) has no valid rows left to predict.")
    columns = dict(bonds.data)
    columns["sector"] = to_run[bonds["sector"]]
    bonds = BondTable(columns, tuple(run_sectors))
    date_idx = market.curves.date_index(bonds["obs_date"])  # names the dates the curve does not cover
    market.curves.spread(date_idx, bonds["rating"])  # names the ratings the spread file lacks
    return Market(bonds=bonds, curves=market.curves), dropped, bond_names


def _bonds_on_dates(bonds, rows: np.ndarray, names: Sequence[str] | None) -> str:
    """``bond XS0001 on 2024-01-31, ...`` for ``rows``: what finds them in the file (its rows are re-sorted by then)."""
    dates = np.datetime_as_string(bonds["obs_date"][rows], unit="D")
    ids = [str(names[code]) if names is not None else str(code) for code in bonds["bond_id"][rows]]
    return ", ".join(f"bond {bond} on {date}" for bond, date in zip(ids, dates, strict=True))


def previous_residuals(bonds, residual: np.ndarray, run_dataset, *, names=None, run_names=None) -> np.ndarray:
    """Each row's previous residual: the bond's previous row in the new file, else its last observation
    before that date in the run's data, else NaN (``has_prev_residual = 0``).

    ``names`` and ``run_names`` are the text bond ids of the two files by code (None for integer ids):
    bonds are matched across the files by their ids, not by the codes each file numbered on its own.
    """
    import pandas as pd

    from bondexp.features import previous_residual

    prev = previous_residual(bonds["bond_id"], bonds["obs_date"], residual)
    missing = np.flatnonzero(np.isnan(prev))
    if len(missing) and len(run_dataset.y):
        left = pd.DataFrame(
            {"obs_date": bonds["obs_date"][missing], "bond": _ids(bonds["bond_id"][missing], names, run_names), "row": missing}
        )
        right = pd.DataFrame(
            {
                "obs_date": np.asarray(run_dataset.meta["obs_date"]),
                "bond": _ids(np.asarray(run_dataset.meta["bond_id"]), run_names, names),
                "prev": np.asarray(run_dataset.y),
            }
        )
        merged = pd.merge_asof(
            left.sort_values("obs_date", kind="stable"),
            right.sort_values("obs_date", kind="stable"),
            on="obs_date",
            by="bond",
            allow_exact_matches=False,
            direction="backward",
        )
        prev[merged["row"].to_numpy()] = merged["prev"].to_numpy(dtype=np.float64)
    return prev


def _ids(codes: np.ndarray, names, other_names) -> np.ndarray:
    """Bond ids comparable across two files: the codes when neither file has text ids, else text."""
    if names is None and other_names is None:
        return codes
    return np.asarray(names, dtype=object)[codes] if names is not None else codes.astype(str).astype(object)


# ---------------------------------------------------------------- predicting


def predict_batches(
    run: RunModels,
    market,
    *,
    batch_rows: int,
    bond_names=None,
    progress: bool = False,
    workers: int = 1,
    times: dict[str, float] | None = None,
) -> Iterator[tuple[dict[str, np.ndarray], bytes]]:
    """``(columns, CSV rows)`` of every batch of rows (see the README's Predict section), in the table's row order.

    Two passes over the batches, each spread over ``workers`` processes: the DCF fair value (the
    previous residuals need every row's), then features and every model. ``times`` (when given)
    gathers the CPU seconds of each phase, summed over the processes.
    """
    bonds = market.bonds
    n = len(bonds)
    bounds = batch_bounds(n, batch_rows)
    times = {} if times is None else times
    state = _Batches(
        run=run,
        market=market,
        issue_size_known=bool(np.isfinite(bonds["issue_size"]).any()),
        names=None if bond_names is None else np.asarray(bond_names, dtype=object),
    )
    with _bar(n, progress, "fair value") as bar:
        fair, accrued = np.empty(n), np.empty(n)
        for (start, stop), (priced, spent) in zip(bounds, ordered_map(_price, bounds, state=state, workers=workers), strict=True):
            fair[start:stop], accrued[start:stop] = priced
            _add(times, spent)
            bar.update(stop - start)
        clock = time.process_time()
        market_price = np.asarray(bonds["clean_price"], dtype=np.float64)
        prev = previous_residuals(bonds, market_price - fair, run.dataset, names=bond_names, run_names=run.bond_names)
        _add(times, {"previous residuals": time.process_time() - clock})
        bar.reset()
        bar.set_description(f"predict ({len(run.artifacts)} model{'s' if len(run.artifacts) != 1 else ''})")
        tasks = [(start, stop, fair[start:stop], accrued[start:stop], prev[start:stop]) for start, stop in bounds]
        for (start, stop), (out, spent) in zip(bounds, ordered_map(_predict, tasks, state=state, workers=workers), strict=True):
            _add(times, spent)
            yield out
            bar.update(stop - start)


#: Batches start at multiples of this many rows. BLAS kernels take a matrix's rows in groups of
#: 4 or 8 and its last few rows another way, so a row's last bit would depend on where it sits in
#: its batch; aligned starts make a row's arithmetic the same whatever the batch size.
ROW_ALIGN = 8


def batch_bounds(n: int, batch_rows: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of batches of at most ``batch_rows`` rows: nearly equal, an even count when more than one.

    Two workers then finish together: 1,000,000 rows in batches of 65,536 would leave a last batch
    of 16,960 rows and one worker idle for most of a batch at the end. The bounds do not depend
    on the worker count, so neither do the predictions.
    """
    count = -(-n // batch_rows)
    count += count % 2 if count > 1 else 0
    size = min(batch_rows, -(-n // (count * ROW_ALIGN)) * ROW_ALIGN)
    return [(start, min(start + size, n)) for start in range(0, n, size)]


@dataclass(frozen=True)
class _Batches:
    """What every batch needs, shared with the worker processes by fork."""

    run: RunModels
    market: Any
    issue_size_known: bool  # decided over the whole file, not per batch
    names: np.ndarray | None  # the file's text bond ids by code


def _price(state: _Batches, start: int, stop: int, times) -> tuple:
    """``(fair clean price, accrued interest)`` of the rows ``start:stop``."""
    priced = state.market.curves.fair_value(state.market.bonds.take(np.arange(start, stop)))
    lap(times, "fair value")
    return priced["clean_price"], priced["accrued"]


def _predict(state: _Batches, start: int, stop: int, fair, accrued, prev, times) -> tuple[dict[str, np.ndarray], bytes]:
    """The output columns of the rows ``start:stop``, and the same as CSV rows (no header)."""
    from bondexp.bondtable import RATINGS
    from bondexp.feature_names import FEATURES
    from bondexp.features import feature_matrix
    from bondexp.steps.train import one_thread

    batch = state.market.bonds.take(np.arange(start, stop))
    X = feature_matrix(batch, state.market.curves, fair=fair, prev_residual=prev, issue_size_known=state.issue_size_known)
    lap(times, "features")
    market_price = np.asarray(batch["clean_price"], dtype=np.float64)
    out = {
        "bond_id": batch["bond_id"] if state.names is None else state.names[batch["bond_id"]],
        "obs_date": batch["obs_date"],
        "rating": np.asarray(RATINGS)[batch["rating"]],
        "sector": np.asarray(state.market.bonds.sectors)[batch["sector"]],
        "market_price": market_price,
        "fair_value": fair,
        "dcf_market_minus_model": market_price - fair,
    }
    duration = X[:, FEATURES.index("modified_duration")]
    with one_thread():  # once for the batch, not once a model
        for name, artifact in state.run.artifacts.items():
            out.update(_model_columns(name, artifact, X, fair, accrued, market_price, duration))
            lap(times, name)
    csv_rows = csv_bytes(out, header=False)
    lap(times, "write")
    return out, csv_rows


def csv_bytes(columns: Mapping[str, np.ndarray], *, header: bool) -> bytes:
    """``columns`` as CSV text, as pyarrow writes it: the workers format their batches (the costly
    part of writing, about 10 s of CPU a million rows) and the parent only appends the bytes."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    sink = pa.BufferOutputStream()
    pacsv.write_csv(pa.table(columns), sink, write_options=pacsv.WriteOptions(include_header=header))
    return sink.getvalue().to_pybytes()


def _add(total: dict[str, float], spent: Mapping[str, float]) -> None:
    for phase, seconds in spent.items():
        total[phase] = total.get(phase, 0.0) + seconds


def _model_columns(name, artifact, X, fair, accrued, market, duration) -> dict[str, np.ndarray]:
    """One model's output columns for a batch: adjustment, price, its interval, risk figures and the gap to market."""
    import pandas as pd

    from bondexp.feature_names import FEATURES
    from bondexp.steps.train import predict_all

    features = list(artifact.features)
    frame = pd.DataFrame(X[:, [FEATURES.index(f) for f in features]], columns=features)
    pred = predict_all(artifact.pipeline, frame)
    price = fair + pred["mean"]
    cols = {f"{name}_adjustment": pred["mean"], f"{name}_price": price}
    if "lower" in pred:
        cols[f"{name}_price_lower"], cols[f"{name}_price_upper"] = fair + pred["lower"], fair + pred["upper"]
    for key in _AS_IS:
        if key in pred:
            cols[f"{name}_{key}"] = np.broadcast_to(np.asarray(pred[key], dtype=np.float64), price.shape)
    gap = market - price
    cols[f"{name}_market_minus_model"] = gap
    with np.errstate(divide="ignore", invalid="ignore"):
        cols[f"{name}_yield_gap_bp"] = np.where(duration > 0, -1e4 * gap / ((price + accrued) * duration), np.nan)
    return cols


@contextlib.contextmanager
def _bar(total: int, enabled: bool, description: str):
    """A bar over the rows on a terminal; none in a log or a pipe, where its redraws are carriage returns."""
    from tqdm.auto import tqdm

    shown = enabled and sys.stderr.isatty()
    # unit_scale shows 1,000,000 rows as 1.00M, but 89 rows as 89.0
    with tqdm(total=total, desc=description, unit="rows", unit_scale=total >= 10_000, disable=not shown, file=sys.stderr) as bar:
        yield bar

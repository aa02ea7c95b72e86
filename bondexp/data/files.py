"""Market data from CSV or Parquet files: read batch by batch, convert, validate once.

The bond file has one row per bond and observation date. Its columns (names as in the file are
mapped to ours with ``data.columns``; by default they are ours):

==============  ======================================================================
bond_id         bond identifier: integer, or text (ISIN, CUSIP: numbered in sorted order)
obs_date        observation (settlement) date, ISO ``YYYY-MM-DD`` or any date pandas parses
issue_date      issue date (accrual start)
maturity_date   maturity date, after the issue date and after the observation date
coupon_rate     annual coupon; ``data.coupon_unit``: ``decimal`` (0.045) or ``percent`` (4.5)
frequency       coupons per year: 1, 2, 4 or 12
day_count       ``30/360`` or ``ACT/ACT`` (or the codes 0, 1)
rating          AAA, AA, A, BBB, BB, B or CCC
sector          sector name (free text)
clean_price     market clean price; ``data.price_unit``: ``per_100`` (per 100 face) or
                ``per_face`` (per bond: divided by the face value, times 100)
issue_size      optional: amount issued (any unit; the liquidity proxy), blank when unknown
face_value      optional: face value per bond, for ``price_unit: per_face``; without this
                column, ``data.face_value`` gives one face value for every bond
==============  ======================================================================

The curve file (``data.curve_path``) is long: ``date``, ``tenor`` (years), ``zero_rate``
(decimal, continuously compounded), every tenor on every date. The optional spread file
(``data.spread_path``) is long too: ``date``, ``rating``, ``spread`` (decimal, continuously
compounded, added to the zero rate); without it every spread is 0. The bond file is read as
``data.source`` says; a curve or spread file ending in ``.parquet`` or ``.pq`` is read as
Parquet, anything else as CSV.

Parquet is read one record batch at a time (row group by row group) and CSV in chunks; each
batch is converted to compact columns at once, so memory holds one raw batch, not the file.
Invalid rows go through :func:`bondexp.bondtable.validate` with the file's 1-based data-row
numbers (header not counted).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bondexp.bondtable import (
    DATE_HINT,
    OPTIONAL_COLUMNS,
    RATINGS,
    REQUIRED_COLUMNS,
    coerce_columns,
    count_of,
    parse_dates,
    parse_numbers,
    validate,
)
from bondexp.curves import CurveTable
from bondexp.data import Market, existing_path
from bondexp.errors import ConfigError, DataValidationError
from bondexp.pricing import DAY_COUNTS

#: Every column the bond file may hold, in our names.
FILE_COLUMNS = REQUIRED_COLUMNS + ("face_value",)
_OPTIONAL = OPTIONAL_COLUMNS + ("face_value",)
_TEXT = ("bond_id", "day_count", "rating", "sector")  # read as text, so no batch guesses a number
BATCH_ROWS = 1 << 16
COUPON_UNITS = ("decimal", "percent")
PRICE_UNITS = ("per_100", "per_face")


def load_file_market(cfg: Mapping, *, known_sectors: Sequence[str] | None = None):
    """Load the bond, curve and spread files that ``cfg`` (the ``data`` config) names.

    ``known_sectors``: the only sectors a row may have (see :func:`bondexp.bondtable.validate`).

    Returns
    -------
    market : Market
    dropped : dict of str to int
        Rows dropped per problem when ``on_invalid`` is ``drop``.

    Raises
    ------
    ConfigError
        If a path does not exist (naming the key, e.g. ``data.path``, and the value), or a unit
        or column mapping is invalid.
    DataValidationError
        If a mapped column is missing from the file, or rows are invalid and ``on_invalid`` is
        ``raise``, or the curve or spread file is incomplete.
    """
    path = existing_path(cfg, "path")
    curve_path = existing_path(cfg, "curve_path")
    spread_path = existing_path(cfg, "spread_path") if cfg.get("spread_path") is not None else None
    coupon_unit = _choice(cfg, "coupon_unit", COUPON_UNITS, "decimal")
    price_unit = _choice(cfg, "price_unit", PRICE_UNITS, "per_100")
    on_invalid = _choice(cfg, "on_invalid", ("raise", "drop"), "raise")

    parquet = cfg["source"] == "parquet"
    mapping = _mapping(cfg, _header(path, parquet=parquet), path)
    if price_unit == "per_face" and "face_value" not in mapping and cfg.get("face_value") is None:
        raise ConfigError(
            "The 'data.price_unit' config key is 'per_face', which needs a face value: map a "
            "'face_value' column in data.columns or set data.face_value."
        )
    raw = _concat(list(_batches(path, mapping, parquet=parquet)), path)
    if coupon_unit == "percent":
        raw["coupon_rate"] = raw["coupon_rate"] / 100.0
    if price_unit == "per_face":
        face = raw.pop("face_value", None)
        face = np.float64(cfg["face_value"]) if face is None else np.where(face > 0, face, np.nan)
        raw["clean_price"] = raw["clean_price"] * 100.0 / face
    raw.pop("face_value", None)
    row_numbers = np.arange(1, len(raw["bond_id"]) + 1)
    bonds, dropped = validate(raw, on_invalid=on_invalid, row_numbers=row_numbers, known_sectors=known_sectors)
    if len(bonds) == 0:  # else the split said its parts had none "of the 0 observation months"
        raise DataValidationError(
            f"The file {path} (data.path) has no valid row: data.on_invalid=drop dropped all {len(raw['bond_id']):,} ({dropped})."
        )
    return Market(bonds=bonds, curves=read_curves(curve_path, spread_path)), dropped


def bond_id_names(cfg: Mapping) -> tuple[str, ...] | None:
    """The text bond ids (ISIN, CUSIP) of the bond file ``cfg`` names, indexed by the code :func:`validate`
    gives each; None when the ids are integers (then the code is the id).

    A BondTable keeps codes only; ``bondexp.predict`` names bonds, and matches them across files, with these.
    """
    path = existing_path(cfg, "path")
    parquet = cfg["source"] == "parquet"
    column = _mapping(cfg, _header(path, parquet=parquet), path)["bond_id"]
    ids = coerce_columns(_concat(list(_batches(path, {"bond_id": column}, parquet=parquet)), path))["bond_id"]
    if ids.dtype.kind in "iu":
        return None
    return tuple(str(name) for name in np.unique(ids) if name.strip() != "")  # validate's numbering: sorted, blanks out


def read_curves(curve_path, spread_path=None) -> CurveTable:
    """A CurveTable from a long curve file and an optional long spread file.

    Raises
    ------
    DataValidationError
        If a file lacks a column, a (date, tenor) pair is missing or repeated, a value does not
        parse, or the spread file names an unknown rating.
    """
    curve = _read_table(curve_path, ("date", "tenor", "zero_rate"))
    _refuse_rows(curve_path, ~(pd.to_numeric(curve["tenor"], errors="coerce") > 0), "with a tenor that is not a positive number of years")
    _refuse_rows(curve_path, curve["zero_rate"].abs() > MAX_ZERO_RATE, f"with a zero rate beyond +-{MAX_ZERO_RATE:.0%} a year {_DECIMALS}")
    grid = _pivot(curve, "tenor", "zero_rate", curve_path)
    tenors = grid.columns.to_numpy(dtype=np.float64)
    spreads = np.zeros((len(grid), len(RATINGS)))
    if spread_path is not None:
        table = _read_table(spread_path, ("date", "rating", "spread"))
        _refuse_rows(spread_path, table["spread"] > MAX_SPREAD, f"with a spread above {MAX_SPREAD:.0%} a year {_DECIMALS}")
        table["rating"] = table["rating"].astype(str).str.strip().str.upper()
        unknown = sorted(set(table["rating"]) - set(RATINGS))
        if unknown:
            raise DataValidationError(f"The spread file {spread_path} has unknown ratings {unknown}; expected {list(RATINGS)}.")
        spreads = _pivot(table, "rating", "spread", spread_path, complete=False).reindex(index=grid.index, columns=list(RATINGS)).to_numpy()
    return CurveTable(grid.index.to_numpy(dtype="datetime64[D]"), tenors, grid.to_numpy(), spreads)


def write_market(market, directory, *, fmt: str = "csv", row_group_size: int = BATCH_ROWS) -> dict[str, Path]:
    """Write a Market as bond, curve and spread files in this module's schema.

    Turns a synthetic market into example files, and round-trips in tests.

    Returns
    -------
    dict of str to Path
        ``{"path", "curve_path", "spread_path"}``: the three files, ready for ``data.*`` keys.
    """
    if fmt not in ("csv", "parquet"):
        raise ConfigError(f"The 'fmt' parameter of write_market must be 'csv' or 'parquet'. Got {fmt!r} instead.")
    bonds, curves = market.bonds, market.curves
    frame = pd.DataFrame({name: bonds[name] for name in bonds.columns if not name.startswith("oracle_")})
    frame["day_count"] = np.asarray(DAY_COUNTS)[frame["day_count"]]
    frame["rating"] = np.asarray(RATINGS)[frame["rating"]]
    frame["sector"] = np.asarray(bonds.sectors)[frame["sector"]]
    dates = np.repeat(curves.dates, len(curves.tenors))
    curve = pd.DataFrame({"date": dates, "tenor": np.tile(curves.tenors, len(curves.dates)), "zero_rate": curves.zero_rates.ravel()})
    spread = pd.DataFrame(
        {
            "date": np.repeat(curves.dates, len(RATINGS)),
            "rating": np.tile(RATINGS, len(curves.dates)),
            "spread": curves.spreads.ravel(),
        }
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, name, table in (("path", "bonds", frame), ("curve_path", "curve", curve), ("spread_path", "spreads", spread)):
        paths[key] = directory / f"{name}.{fmt}"
        if fmt == "csv":
            table.to_csv(paths[key], index=False, float_format="%.17g")
        else:
            pq.write_table(pa.Table.from_pandas(table, preserve_index=False), paths[key], row_group_size=row_group_size)
    return paths


def _choice(cfg, key, allowed, default):
    value = cfg.get(key, default)
    if value not in allowed:
        raise ConfigError(f"The 'data.{key}' config key must be one of {list(allowed)}. Got {value!r} instead.")
    return value


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _header(path: Path, *, parquet: bool) -> list[str]:
    try:
        if parquet:
            return list(pq.ParquetFile(path).schema_arrow.names)
        return list(pd.read_csv(path, nrows=0).columns)
    except (pa.ArrowException, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        kind = "Parquet" if parquet else "CSV"
        raise DataValidationError(f"The file {path} (data.path) cannot be read as {kind}, as data.source says: {error}") from error


def _mapping(cfg, header, path) -> dict[str, str]:
    """Our column name -> the file's, for the columns the file has.

    Optional columns (issue size, face value) are used when the file has them; one mapped to
    null is ignored even then.
    """
    given = dict(cfg.get("columns") or {})
    unknown = sorted(set(given) - set(FILE_COLUMNS))
    if unknown:
        raise ConfigError(f"The 'data.columns' config key maps unknown columns {unknown}; known columns are {list(FILE_COLUMNS)}.")
    mapping, missing = {}, []
    for ours in FILE_COLUMNS:
        theirs = given.get(ours, ours)
        if theirs is None and ours not in _OPTIONAL:
            raise ConfigError(f"The 'data.columns.{ours}' config key must name a column; the column is required.")
        if theirs in header:
            mapping[ours] = theirs
        elif theirs is not None and ours not in _OPTIONAL:
            missing.append(f"{theirs!r} (data.columns.{ours})")
    if missing:
        raise DataValidationError(
            _separator_message(path, header) or f"The file {path} lacks the columns {', '.join(missing)}; its columns are {header}."
        )
    return mapping


def _separator_message(path: Path, header: Sequence[Any]) -> str:
    """The error for a CSV whose header read as one column holding ``;``, tabs or ``|``; empty for any other header.

    Its "missing columns" were every column, listed before the one line that said why.
    """
    if len(header) != 1:
        return ""
    for separator, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
        if separator in str(header[0]):
            return (
                f"The file {path} has its columns separated by {name}, and bondexp reads comma-separated files: convert it, for "
                f"example pandas.read_csv(path, sep={separator!r}, decimal=...).to_csv(new_path, index=False), or write Parquet."
            )
    return ""


def _batches(path: Path, mapping: Mapping[str, str], *, parquet: bool) -> Iterator[dict[str, np.ndarray]]:
    """Compact, coerced columns of the bond file, one batch at a time."""
    theirs = list(dict.fromkeys(mapping.values()))
    if parquet:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=theirs):
            yield coerce_columns({ours: _arrow_values(batch.column(name), ours) for ours, name in mapping.items()})
    else:
        text = {mapping[ours]: str for ours in _TEXT if ours in mapping}
        for chunk in pd.read_csv(path, usecols=theirs, dtype=text, keep_default_na=False, na_values=[""], chunksize=BATCH_ROWS):
            yield coerce_columns({ours: _frame_values(chunk[name], ours) for ours, name in mapping.items()})


def _arrow_values(array: pa.Array, ours: str) -> np.ndarray:
    if ours in _TEXT and (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        # Convert each distinct text once (a batch's 65,536 rows hold a few dozen): turning every
        # row into a Python string and sorting them to number them took seconds a million rows.
        # The conversions are row by row, so the result is the same as converting every row.
        encoded = pc.dictionary_encode(pc.fill_null(array, ""))
        distinct = encoded.dictionary.to_numpy(zero_copy_only=False).astype(str)
        return coerce_columns({ours: distinct})[ours][encoded.indices.to_numpy()]
    if pa.types.is_date(array.type) or pa.types.is_timestamp(array.type):
        return array.to_numpy(zero_copy_only=False).astype("datetime64[D]")
    return array.to_numpy(zero_copy_only=False)


def _frame_values(series: pd.Series, ours: str) -> np.ndarray:
    if ours in _TEXT:
        return series.fillna("").to_numpy(dtype=str)
    return series.to_numpy()


def _concat(batches: list[dict[str, np.ndarray]], path: Path) -> dict[str, np.ndarray]:
    """The bond file's batches as one set of columns; a file with a header only (no batch from Parquet, an
    empty one from CSV) is an error here, where the split said its parts had none "of the 0 observation months"."""
    if not batches or not any(len(next(iter(batch.values()))) for batch in batches):
        raise DataValidationError(f"The file {path} (data.path) has no data rows, only its header.")
    return {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}


def _read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    frame = pd.read_parquet(path) if _is_parquet(path) else pd.read_csv(path)
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        got = list(frame.columns)
        raise DataValidationError(
            _separator_message(path, got) or f"The file {path} lacks the columns {missing}; expected {list(columns)}, got {got}."
        )
    frame = frame[list(columns)].copy()
    value = columns[-1]
    frame["date"] = parse_dates(frame["date"].to_numpy())
    frame[value] = parse_numbers(frame[value].to_numpy())
    bad = frame["date"].isna() | ~np.isfinite(frame[value])
    _refuse_rows(path, bad, f"whose date or {value} does not parse or is infinite", note=f"; dates {DATE_HINT}")
    return frame


#: Beyond these, a curve or spread file is in percent or basis points, read as decimals: the DCF priced every
#: bond at nonsense with exit 0 (zero rates x100: residual mean +80). The synthetic market's rates stay
#: within 0.04 and its CCC spreads in a crisis reach 0.80.
MAX_ZERO_RATE, MAX_SPREAD = 1.0, 2.0
_DECIMALS = "(rates and spreads are decimals, 0.045 for 4.5%: not percent, not basis points)"


def _refuse_rows(path: Path, bad: pd.Series, what: str, *, note: str = "") -> None:
    """Raise DataValidationError naming the curve or spread file's first ``bad`` rows (1-based data rows)."""
    if bad.any():
        rows = (np.flatnonzero(bad.to_numpy())[:5] + 1).tolist()
        counted = count_of(int(bad.sum()), "row")
        raise DataValidationError(f"The file {path} has {counted} {what}; first rows {rows} (1-based data rows, header not counted{note}).")


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds, so a message shows 0.5, not np.float64(0.5)."""
    return value.item() if isinstance(value, np.generic) else value


def _pivot(frame: pd.DataFrame, column: str, value: str, path: Path, *, complete: bool = True) -> pd.DataFrame:
    """Long (date, column, value) rows -> a date x column grid, sorted both ways."""
    repeated = frame.duplicated(["date", column])
    if repeated.any():
        date, key = frame.loc[repeated, ["date", column]].iloc[0]
        key = f"{key:g}" if isinstance(key, float) else key
        _refuse_rows(path, repeated, f"repeating an earlier row's (date, {column}) pair, e.g. ({date.date()}, {key})")
    grid = frame.pivot(index="date", columns=column, values=value).sort_index().sort_index(axis=1)
    holes = grid.isna().to_numpy()
    if complete and holes.any():
        dates, keys = np.nonzero(holes)
        first = [(str(grid.index[d].date()), _plain(grid.columns[k])) for d, k in zip(dates[:5], keys[:5], strict=True)]
        raise DataValidationError(
            f"The file {path} lacks {int(holes.sum())} (date, {column}) pairs of its grid, e.g. {first}; every date needs every {column}."
        )
    return grid

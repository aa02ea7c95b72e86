"""CSV and Parquet loading: exact round trips, column mapping and units, errors that name the fix."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from bondexp.data import data_fingerprint, load_market
from bondexp.data.files import write_market
from bondexp.data.synthetic import generate_market
from bondexp.errors import ConfigError, DataValidationError


@pytest.fixture(scope="module")
def market():
    return generate_market(n_observations=2500, n_months=30, seed=11, min_regime_months=4)


@pytest.fixture(scope="module")
def csv_files(market, tmp_path_factory):
    return {k: str(v) for k, v in write_market(market, tmp_path_factory.mktemp("csv")).items()}


def cfg_for(paths, source="csv", **extra):
    return {"source": source, **paths, "on_invalid": "raise", **extra}


def assert_same_market(loaded, market):
    for name in loaded.bonds.columns:
        np.testing.assert_array_equal(loaded.bonds[name], market.bonds[name], err_msg=name)
    assert loaded.bonds.sectors == market.bonds.sectors
    for name in ("dates", "tenors", "zero_rates", "spreads"):
        np.testing.assert_array_equal(getattr(loaded.curves, name), getattr(market.curves, name), err_msg=name)


def test_csv_round_trip_is_exact(market, csv_files):
    loaded, dropped = load_market(cfg_for(csv_files), seed=0)
    assert dropped == {}
    assert_same_market(loaded, market)
    assert not any(name.startswith("oracle_") for name in loaded.bonds.columns)


def test_parquet_round_trip_reads_many_row_groups(market, tmp_path):
    paths = {k: str(v) for k, v in write_market(market, tmp_path, fmt="parquet", row_group_size=300).items()}
    assert pq.ParquetFile(paths["path"]).num_row_groups == 9
    loaded, _ = load_market(cfg_for(paths, source="parquet"), seed=0)
    assert_same_market(loaded, market)
    fair = loaded.curves.fair_value(loaded.bonds)["clean_price"]
    np.testing.assert_allclose(fair, market.curves.fair_value(market.bonds)["clean_price"], rtol=0, atol=1e-12)


def test_column_mapping_and_units(market, csv_files, tmp_path):
    frame = pd.read_csv(csv_files["path"]).rename(columns={"clean_price": "PX", "coupon_rate": "CPN", "bond_id": "ISIN"})
    frame["CPN"] *= 100.0  # percent
    frame["PX"] *= 10.0  # per bond of 1,000 face
    frame["ISIN"] = "XS" + frame["ISIN"].astype(str).str.zfill(8)
    frame = frame.drop(columns="issue_size")
    frame.to_csv(tmp_path / "bonds.csv", index=False, float_format="%.17g")
    cfg = cfg_for(
        {**csv_files, "path": str(tmp_path / "bonds.csv")},
        columns={"clean_price": "PX", "coupon_rate": "CPN", "bond_id": "ISIN"},
        coupon_unit="percent",
        price_unit="per_face",
        face_value=1000.0,
    )
    loaded, _ = load_market(cfg, seed=0)
    np.testing.assert_allclose(loaded.bonds["clean_price"], market.bonds["clean_price"], rtol=1e-13)
    np.testing.assert_allclose(loaded.bonds["coupon_rate"], market.bonds["coupon_rate"], rtol=1e-13)
    assert np.isnan(loaded.bonds["issue_size"]).all()  # optional, absent from the file
    np.testing.assert_array_equal(loaded.bonds["bond_id"], market.bonds["bond_id"] - 1)  # text ids numbered in sorted order

    frame["face"] = 1000.0  # a face value column instead of the key
    frame.to_csv(tmp_path / "bonds.csv", index=False, float_format="%.17g")
    cfg["face_value"], cfg["columns"]["face_value"] = None, "face"
    loaded, _ = load_market(cfg, seed=0)
    np.testing.assert_allclose(loaded.bonds["clean_price"], market.bonds["clean_price"], rtol=1e-13)


def corrupt(csv_files, tmp_path, edits):
    """A copy of the bond file with ``edits`` {(row, column): value} (0-based data rows)."""
    frame = pd.read_csv(csv_files["path"], dtype=str, keep_default_na=False)
    for (row, column), value in edits.items():
        frame.loc[row, column] = value
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    return {**csv_files, "path": str(path)}


BAD = [
    ("clean_price", "abc", "non-numeric or missing price"),
    ("clean_price", "", "non-numeric or missing price"),
    ("clean_price", "-5", "non-positive price"),
    ("coupon_rate", "-0.01", "negative coupon"),
    ("maturity_date", "2000-01-01", "maturity not after issue"),
    ("frequency", "6", "unknown frequency"),
    ("rating", "AA-", "unknown rating"),
    ("day_count", "ACT/365", "unknown day count"),
    ("obs_date", "31/31/2020", "missing or unparseable observation date"),
    ("clean_price", "inf", "infinite price"),
]


@pytest.mark.parametrize(("column", "value", "reason"), BAD)
def test_bad_rows_are_named_by_file_row(csv_files, tmp_path, column, value, reason):
    paths = corrupt(csv_files, tmp_path, {(3, column): value, (10, column): value})
    with pytest.raises(DataValidationError) as info:
        load_market(cfg_for(paths), seed=0)
    message = str(info.value)
    assert f"{reason}: column '{column}" in message and "2 rows, first rows [4, 11]" in message, message
    assert "1-based data rows, header not counted" in message


def test_observation_outside_life_and_duplicates(csv_files, tmp_path):
    frame = pd.read_csv(csv_files["path"], dtype=str, keep_default_na=False)
    edits = {(0, "obs_date"): frame.loc[0, "maturity_date"], (1, "issue_date"): "2099-01-01"}
    paths = corrupt(csv_files, tmp_path, edits)
    text = open(paths["path"]).read().splitlines()
    open(paths["path"], "w").write("\n".join(text + [text[5]]) + "\n")  # file row 5 again, as row 2501
    with pytest.raises(DataValidationError) as info:
        load_market(cfg_for(paths), seed=0)
    message = str(info.value)
    assert "observation at or after maturity: column 'obs_date', 1 row, first rows [1]" in message
    assert "observation before issue: column 'obs_date', 1 row, first rows [2]" in message
    assert "row repeating an earlier row in every column: column 'every column', 1 row, first rows [2501]" in message


def test_drop_mode_drops_and_counts(market, csv_files, tmp_path):
    paths = corrupt(csv_files, tmp_path, {(3, "clean_price"): "-1", (7, "rating"): "ZZ", (9, "rating"): "ZZ"})
    loaded, dropped = load_market(cfg_for(paths, on_invalid="drop"), seed=0)
    assert dropped == {"non-positive price": 1, "unknown rating": 2}
    assert len(loaded.bonds) == len(market.bonds) - 3


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"path": "/no/such/bonds.csv"}, ConfigError, "The 'data.path' config key must name an existing file. Got '/no/such/bonds.csv'"),
        ({"curve_path": "/nope.csv"}, ConfigError, "'data.curve_path' config key must name an existing file. Got '/nope.csv'"),
        ({"path": "???"}, ConfigError, "'data.path' config key must name an existing file. Got no value"),
        ({"coupon_unit": "bp"}, ConfigError, "'data.coupon_unit' config key must be one of ['decimal', 'percent']. Got 'bp'"),
        ({"price_unit": "per_face"}, ConfigError, "needs a face value"),
        ({"on_invalid": "skip"}, ConfigError, "'data.on_invalid' config key must be one of ['raise', 'drop']"),
        ({"columns": {"price": "PX"}}, ConfigError, "maps unknown columns ['price']"),
        ({"columns": {"clean_price": "PX"}}, DataValidationError, "lacks the columns 'PX' (data.columns.clean_price)"),
        ({"source": "parquet"}, DataValidationError, "cannot be read as Parquet, as data.source says"),
    ],
)
def test_config_errors_name_the_key(csv_files, change, error, message):
    with pytest.raises(error) as info:
        load_market({**cfg_for(csv_files), **change}, seed=0)
    assert message in str(info.value)


@pytest.mark.parametrize("key", ["path", "curve_path"])
def test_a_semicolon_separated_file_is_named_as_such(csv_files, tmp_path, key):
    """Its header read as one column, and the error listed every column as missing, then said why."""
    pd.read_csv(csv_files[key]).to_csv(tmp_path / "semi.csv", sep=";", index=False)
    with pytest.raises(DataValidationError) as info:
        load_market(cfg_for({**csv_files, key: str(tmp_path / "semi.csv")}), seed=0)
    assert str(info.value).startswith(f"The file {tmp_path / 'semi.csv'} has its columns separated by semicolons, and bondexp reads")
    assert "lacks" not in str(info.value)


def test_incomplete_curve_file_is_rejected(csv_files, tmp_path):
    curve = pd.read_csv(csv_files["curve_path"])
    curve.drop(index=[5]).to_csv(tmp_path / "curve.csv", index=False)
    with pytest.raises(DataValidationError, match=r"lacks 1 \(date, tenor\) pairs of its grid, e.g. \[\('\d{4}-\d\d-\d\d', [\d.]+\)\]"):
        load_market(cfg_for({**csv_files, "curve_path": str(tmp_path / "curve.csv")}), seed=0)  # 0.5, not np.float64(0.5)
    short = curve[curve["date"] != curve["date"].max()]  # a complete grid that misses the last date
    short.to_csv(tmp_path / "short.csv", index=False)
    market, _ = load_market(cfg_for({**csv_files, "curve_path": str(tmp_path / "short.csv")}), seed=0)
    with pytest.raises(DataValidationError, match="observation date has no curve"):
        market.curves.fair_value(market.bonds)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_bond_file_with_a_header_only_says_so(csv_files, tmp_path, fmt):
    empty = pd.read_csv(csv_files["path"]).head(0)
    path = tmp_path / f"bonds.{fmt}"
    empty.to_csv(path, index=False) if fmt == "csv" else empty.to_parquet(path)
    with pytest.raises(DataValidationError, match=r"bonds\.(csv|parquet) \(data.path\) has no data rows, only its header"):
        load_market({**cfg_for({**csv_files, "path": str(path)}), "source": fmt}, seed=0)


@pytest.mark.parametrize(
    "kind, column, change, message",
    [
        ("curve_path", "zero_rate", lambda v: v * 100, "with a zero rate beyond +-100% a year (rates and spreads are decimals"),
        ("spread_path", "spread", lambda v: v * 10_000, "with a spread above 200% a year (rates and spreads are decimals"),
        ("curve_path", "tenor", lambda v: -v, "with a tenor that is not a positive number of years"),
    ],
    ids=["percent rates", "spreads in basis points", "negative tenors"],
)
def test_curve_and_spread_unit_mistakes_are_named_by_file_row(csv_files, tmp_path, kind, column, change, message):
    """Zero rates in percent gave a residual mean of +80 with exit 0; spreads in basis points failed the DCF with
    'dirty price must be positive for 1626 bond(s)', blaming the prices."""
    frame = pd.read_csv(csv_files[kind])
    frame[column] = change(frame[column])
    frame.to_csv(tmp_path / "edited.csv", index=False)
    with pytest.raises(DataValidationError, match=rf"edited.csv has \d[\d,]* rows? {re.escape(message)}.*first rows \[1, 2, 3"):
        load_market(cfg_for({**csv_files, kind: str(tmp_path / "edited.csv")}), seed=0)


def test_dropping_every_row_says_so(csv_files, tmp_path):
    """Percent coupons with data.on_invalid=drop dropped all rows; the split then spoke of '0 observation months'."""
    frame = pd.read_csv(csv_files["path"])
    frame["coupon_rate"] = frame["coupon_rate"] * 100 + 1.5  # every coupon above 100%
    frame.to_csv(tmp_path / "bonds.csv", index=False)
    with pytest.raises(DataValidationError, match=r"has no valid row: data.on_invalid=drop dropped all [\d,]+ \(\{'coupon above 100%"):
        load_market({**cfg_for({**csv_files, "path": str(tmp_path / "bonds.csv")}), "on_invalid": "drop"}, seed=0)


def test_a_spread_file_without_a_rating_names_the_rating_and_the_dates(csv_files, tmp_path):
    spreads = pd.read_csv(csv_files["spread_path"])
    last = spreads["date"].max()
    spreads[(spreads["rating"] != "CCC") | (spreads["date"] != last)].to_csv(tmp_path / "spreads.csv", index=False)
    market, _ = load_market(cfg_for({**csv_files, "spread_path": str(tmp_path / "spreads.csv")}), seed=0)
    with pytest.raises(DataValidationError, match=rf"no spread for ratings \['CCC'\] on 1 observation date, e.g. \['{last}'\]"):
        market.curves.fair_value(market.bonds)


@pytest.mark.parametrize("kind", ["curve_path", "spread_path"])
def test_an_infinite_rate_or_spread_is_named_by_file_row(csv_files, tmp_path, kind):
    frame = pd.read_csv(csv_files[kind], dtype=str)
    frame.iloc[3, -1] = "inf"
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataValidationError, match=r"1 row whose date or \w+ does not parse or is infinite; first rows \[4\]"):
        load_market(cfg_for({**csv_files, kind: str(tmp_path / "bad.csv")}), seed=0)


@pytest.mark.parametrize("kind, column", [("curve_path", "tenor"), ("spread_path", "rating")])
def test_a_repeated_curve_or_spread_row_is_named_by_file_row(csv_files, tmp_path, kind, column):
    """The message showed the pair as text, the tenor in full: [['2015-01-31', '0.3333333333333333']], and no row."""
    frame = pd.read_csv(csv_files[kind])
    pd.concat([frame, frame.iloc[[3]]]).to_csv(tmp_path / "twice.csv", index=False)
    date, key = frame.loc[3, "date"], frame.loc[3, column]
    key = f"{key:g}" if column == "tenor" else key
    pair = re.escape(f"repeating an earlier row's (date, {column}) pair, e.g. ({date}, {key}); first rows [{len(frame) + 1}]")
    with pytest.raises(DataValidationError, match=rf"twice.csv has 1 row {pair}"):
        load_market(cfg_for({**csv_files, kind: str(tmp_path / "twice.csv")}), seed=0)


def test_without_spread_file_spreads_are_zero(csv_files):
    loaded, _ = load_market(cfg_for({**csv_files, "spread_path": None}), seed=0)
    assert np.all(loaded.curves.spreads == 0) and np.all(loaded.curves.market_state()["credit_spread"] == 0)


def test_fingerprint_hashes_file_contents(csv_files, tmp_path):
    copy = tmp_path / "bonds.csv"
    copy.write_bytes(open(csv_files["path"], "rb").read())
    cfg = cfg_for({**csv_files, "path": str(copy)})
    before = data_fingerprint(cfg, seed=0)
    assert before == data_fingerprint(cfg, seed=5)  # the seed does not change file data
    with open(copy, "a") as handle:
        handle.write(open(csv_files["path"]).read().splitlines()[1] + "\n")
    assert data_fingerprint(cfg, seed=0) != before
    with pytest.raises(ConfigError, match="'data.spread_path' config key must name an existing file"):
        data_fingerprint({**cfg, "spread_path": "/missing.csv"}, seed=0)


def test_relative_paths_are_made_absolute_for_workers_elsewhere(csv_files, tmp_path, monkeypatch):
    from bondexp.data import with_absolute_paths

    copy = tmp_path / "bonds.csv"
    copy.write_bytes(open(csv_files["path"], "rb").read())
    monkeypatch.chdir(tmp_path)
    cfg = with_absolute_paths(cfg_for({**csv_files, "path": "bonds.csv", "spread_path": None}))
    assert cfg["path"] == str(copy) and cfg["curve_path"] == csv_files["curve_path"] and cfg["spread_path"] is None
    assert with_absolute_paths({"source": "synthetic", "n_observations": 10}) == {"source": "synthetic", "n_observations": 10}


def test_bonds_maturing_past_the_curve_are_a_note_in_the_data_summary(csv_files, tmp_path):
    """A curve file that stops at 10 years priced the longer bonds at the 10-year rate, held flat, without a word."""
    from bondexp.app import data_summary, format_data_summary
    from bondexp.features import load_dataset

    split = {"train": 0.6, "validation": 0.2, "test": 0.2}
    full, info = load_dataset(cfg_for(csv_files, split=split), seed=0, cache_dir=tmp_path / "cache")
    assert full.notes == () and "note" not in format_data_summary(data_summary(full, info))

    curve = pd.read_csv(csv_files["curve_path"])
    short = {**csv_files, "curve_path": str(tmp_path / "curve_10y.csv")}
    curve[curve["tenor"] <= 10].to_csv(short["curve_path"], index=False)
    dataset, info = load_dataset(cfg_for(short, split=split), seed=0, cache_dir=tmp_path / "cache")
    bonds = pd.read_csv(csv_files["path"], parse_dates=["obs_date", "maturity_date"])
    years = (bonds["maturity_date"] - bonds["obs_date"]).dt.days / 365.0
    beyond = years > 10 + 1 / 12  # a month past the tenor does not count (a 30-year bond's leap days)
    assert 0 < beyond.sum() < len(bonds)
    (note,) = dataset.notes
    assert note.startswith(f"{beyond.sum():,} of {len(bonds):,} observations mature after the curve's longest tenor, 10 years")
    assert f"(the latest {years.max():.1f} years out)" in note and "10-year rate, held flat" in note
    lines = format_data_summary(data_summary(dataset, info)).splitlines()
    (first,) = [i for i, line in enumerate(lines) if line.startswith("  note: ")]
    assert max(map(len, lines)) <= 80 and all(line.startswith("    ") for line in lines[first + 1 :]), lines

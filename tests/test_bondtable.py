"""BondTable and validate(): columnar storage, one-pass validation, raise and drop."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bondexp.bondtable import (
    COUPON_ABOVE_100,
    PRICE_ABOVE_PAYMENTS,
    RATINGS,
    REQUIRED_COLUMNS,
    BondTable,
    parse_dates,
    validate,
)
from bondexp.errors import DataValidationError


def raw_rows(n=6):
    """Valid raw columns as a file would give them: text dates, names for categories."""
    return {
        "bond_id": np.arange(n) % (n // 2) + 10,
        "obs_date": np.repeat(["2020-01-31", "2020-02-29"], n // 2),
        "issue_date": ["2019-01-15"] * n,
        "maturity_date": ["2029-01-15"] * n,
        "coupon_rate": np.full(n, 0.04),
        "frequency": np.full(n, 2),
        "day_count": ["30/360", "ACT/ACT"] * (n // 2),
        "rating": np.resize(["AAA", "bbb", " CCC "], n),
        "sector": ["Utilities", "Energy"] * (n // 2),
        "clean_price": np.linspace(95.0, 105.0, n),
        "issue_size": np.full(n, 500.0),
    }


def test_validate_types_sorts_and_codes():
    raw = raw_rows()
    for name in raw:  # reverse the row order: validate must sort by (obs_date, bond_id)
        raw[name] = np.asarray(raw[name])[::-1]
    table, dropped = validate(raw)
    assert dropped == {}
    assert len(table) == 6 and table.columns[: len(REQUIRED_COLUMNS)] == REQUIRED_COLUMNS
    assert table["obs_date"].dtype == np.dtype("datetime64[D]")
    assert table["rating"].dtype == np.int8 and table["sector"].dtype == np.int16
    keys = list(zip(table["obs_date"], table["bond_id"], strict=True))
    assert keys == sorted(keys)
    assert table.sectors == ("Energy", "Utilities")
    assert {RATINGS[r] for r in table["rating"]} == {"AAA", "BBB", "CCC"}
    assert set(table["day_count"]) == {0, 1}


def test_table_is_read_only_and_take_subsets():
    table, _ = validate(raw_rows())
    with pytest.raises(ValueError):
        table["clean_price"][0] = 1.0
    sub = table.take(np.array([1, 3]))
    assert len(sub) == 2 and sub.sectors == table.sectors
    np.testing.assert_array_equal(sub["clean_price"], table["clean_price"][[1, 3]])
    assert len(table.take(table["rating"] == 0)) == int((table["rating"] == 0).sum())


def test_bondtable_rejects_wrong_dtype_and_lengths():
    table, _ = validate(raw_rows())
    data = dict(table.data)
    with pytest.raises(DataValidationError, match="'coupon_rate' must have dtype float64"):
        BondTable({**data, "coupon_rate": data["coupon_rate"].astype(np.float32)}, table.sectors)
    with pytest.raises(DataValidationError, match="share one length"):
        BondTable({**data, "oracle_x": np.zeros(2)}, table.sectors)


BAD_CASES = [
    # (column set to the bad value, bad value, reason in the message, column the message names)
    ("clean_price", "n/a", "non-numeric or missing price", "clean_price"),
    ("clean_price", -3.0, "non-positive price", "clean_price"),
    ("clean_price", 0.0, "non-positive price", "clean_price"),
    ("coupon_rate", -0.01, "negative coupon", "coupon_rate"),
    ("maturity_date", "2018-06-01", "maturity not after issue", "maturity_date"),
    ("maturity_date", "2020-01-31", "observation at or after maturity", "obs_date"),
    ("issue_date", "2020-12-01", "observation before issue", "obs_date"),
    ("frequency", 3, "unknown frequency", "frequency"),
    ("rating", "BB+", "unknown rating", "rating"),
    ("day_count", "ACT/360", "unknown day count", "day_count"),
    ("obs_date", "not a date", "missing or unparseable observation date", "obs_date"),
    ("obs_date", "01/02/2020", "missing or unparseable observation date", "obs_date"),  # 1 February or January 2?
    ("clean_price", np.inf, "infinite price", "clean_price"),
    ("clean_price", "-inf", "infinite price", "clean_price"),
    ("coupon_rate", "inf", "infinite coupon", "coupon_rate"),
    ("issue_size", np.inf, "infinite issue size", "issue_size"),
    ("sector", "", "missing or unknown sector", "sector"),
    # units: a percent coupon or a price per bond read as a decimal or a price per 100 priced every row at nonsense, exit 0
    ("coupon_rate", 4.5, COUPON_ABOVE_100, "coupon_rate"),
    ("clean_price", 98_500.0, PRICE_ABOVE_PAYMENTS, "clean_price"),
]


def test_a_price_within_the_payments_left_is_valid():
    """The bound is 1.5 x (100 + 100 x coupon x years left): 203.9 for these rows' 4% and 8.96 years."""
    raw = raw_rows()
    raw["clean_price"] = np.array([203.0, 150.0, 100.0, 60.0, 5.0, 1.0])
    assert len(validate(raw)[0]) == 6
    raw["clean_price"][0] = 205.0
    with pytest.raises(DataValidationError, match=r"price above 1.5 times .*: column 'clean_price', 1 row, first rows \[0\]"):
        validate(raw)


@pytest.mark.parametrize(("column", "value", "reason", "named"), BAD_CASES)
def test_each_problem_is_named_with_column_count_and_rows(column, value, reason, named):
    raw = {name: np.asarray(values, dtype=object) for name, values in raw_rows().items()}
    raw[column][[0, 4]] = value  # positions 0 and 4
    with pytest.raises(DataValidationError) as info:
        validate(raw)
    message = str(info.value)
    assert re.search(rf"{re.escape(reason)}: column '{named}', 2 rows, first rows \[0, 4\]", message), message
    assert "0-based positions" in message
    if reason.startswith("infinite"):  # counted once: -inf is not also a non-positive price (drop counts added up to more rows)
        assert message.startswith("1 data problem in"), message


def test_a_date_whose_day_and_month_could_be_swapped_is_not_guessed():
    """06/03/2008 was read month first while 25/08/2012 in the same file was read day first: bonds priced
    under two conventions, with no error. Only a date that reads one way is taken."""
    written = ["25/08/2012", "08/25/2012", "03/03/2008", "6.3.08", "06/03/2008", "2008-03-06", "30 Nov 2026"]
    written += ["06/03/2008 00:00", "6/3/2008 12:00 AM", "25/08/2012 00:00", "2008-03-06T00:00"]  # with a time
    dates = parse_dates(np.array(written, dtype=object))
    expected = ["2012-08-25", "2012-08-25", "2008-03-03", "NaT", "NaT", "2008-03-06", "2026-11-30"]
    expected += ["NaT", "NaT", "2012-08-25", "2008-03-06"]
    np.testing.assert_array_equal(dates, np.array(expected, dtype="datetime64[D]"))
    raw = {name: np.asarray(values, dtype=object) for name, values in raw_rows().items()}
    raw["issue_date"][:] = "15/01/2019"  # day first, and can be nothing else
    raw["maturity_date"][2] = "01/02/2029"
    with pytest.raises(DataValidationError) as info:
        validate(raw)
    message = str(info.value)
    assert "missing or unparseable maturity date: column 'maturity_date', 1 row, first rows [2]" in message, message
    assert "as in 06/03/2008, are not guessed" in message and "issue_date" not in message


def test_one_error_lists_every_problem_with_file_rows():
    raw = {name: np.asarray(values, dtype=object) for name, values in raw_rows(12).items()}
    raw["clean_price"][[2, 3, 5, 6, 7, 8, 9]] = -1.0
    raw["rating"][1] = "AAA+"
    with pytest.raises(DataValidationError) as info:
        validate(raw, row_numbers=np.arange(12) + 1)
    message = str(info.value)
    assert "2 data problems" in message and "1-based data rows" in message
    assert "non-positive price: column 'clean_price', 7 rows, first rows [3, 4, 6, 7, 8]" in message
    assert "unknown rating: column 'rating', 1 row, first rows [2]" in message
    assert "data.on_invalid=drop" in message


def test_sectors_outside_the_known_ones_are_one_more_problem_of_the_same_error():
    """predict gave the file's problems first and its sectors the run never saw in a second error, once they were fixed."""
    raw = {name: np.asarray(values, dtype=object) for name, values in raw_rows(6).items()}
    raw["clean_price"][0] = -1.0
    with pytest.raises(DataValidationError) as info:
        validate(raw, row_numbers=np.arange(6) + 1, known_sectors=["Utilities", "Financials"])
    message = str(info.value)
    assert message.startswith("2 data problems in 6 rows")
    known = "(they know ['Utilities', 'Financials'])"
    assert f"sector the run's models never saw {known}: column 'sector', 3 rows, first rows [2, 4, 6]" in message
    table, dropped = validate(raw, on_invalid="drop", known_sectors=["Utilities", "Energy"])
    assert len(table) == 5 and dropped == {"non-positive price": 1}


def test_duplicates_are_found_and_drop_counts_per_reason():
    raw = {name: np.asarray(values, dtype=object) for name, values in raw_rows().items()}
    raw["bond_id"][1] = raw["bond_id"][0]  # same bond twice on the same date, at another price
    raw["coupon_rate"][5] = -0.02
    with pytest.raises(
        DataValidationError,
        match=r"duplicate \(bond_id, obs_date\) with different values: column 'bond_id, obs_date', 2 rows, first rows \[0, 1\]",
    ):
        validate(raw)
    table, dropped = validate(raw, on_invalid="drop")
    assert dropped == {"duplicate (bond_id, obs_date) with different values": 2, "negative coupon": 1}
    assert len(table) == 3


def test_a_row_repeated_exactly_is_refused_and_dropping_keeps_its_first_copy():
    """Dropping every row of a repeated pair lost the observation a file concatenated twice still had."""
    raw = {name: np.asarray(values, dtype=object) for name, values in raw_rows(6).items()}
    del raw["issue_size"]  # absent: NaN in every row, which must still count as the same value
    raw = {name: np.concatenate([values, values[[2, 2, 4]]]) for name, values in raw.items()}  # row 2 thrice, row 4 twice
    with pytest.raises(
        DataValidationError, match=r"row repeating an earlier row in every column: column 'every column', 3 rows, first rows \[6, 7, 8\]"
    ):
        validate(raw)
    table, dropped = validate(raw, on_invalid="drop")
    assert dropped == {"row repeating an earlier row in every column": 3}
    once, _ = validate({name: values[:6] for name, values in raw.items()})
    assert all(np.array_equal(table.data[name], once.data[name]) for name in once.data if name != "issue_size")
    raw["clean_price"][8] = 99.0  # row 4's second copy differs now: the pair cannot be told apart, both go
    _, dropped = validate(raw, on_invalid="drop")
    assert dropped == {"row repeating an earlier row in every column": 2, "duplicate (bond_id, obs_date) with different values": 2}


def test_columns_of_different_lengths_raise():
    with pytest.raises(DataValidationError, match="share one length"):
        validate({**raw_rows(), "coupon_rate": np.zeros(3)})


def test_missing_columns_raise_even_when_dropping():
    raw = raw_rows()
    del raw["clean_price"], raw["rating"]
    with pytest.raises(DataValidationError, match=r"Missing required columns \['rating', 'clean_price'\]"):
        validate(raw, on_invalid="drop")
    without_size = {name: values for name, values in raw_rows().items() if name != "issue_size"}
    table, _ = validate(without_size)  # issue_size is optional: NaN when absent
    assert np.isnan(table["issue_size"]).all()


def test_text_and_integer_ids_and_sector_codes():
    raw = raw_rows()
    raw["bond_id"] = np.array(["XS2", "XS10", "XS3"] * 2)
    raw["sector"] = np.array([1, 0, 1, 0, 1, 0])
    table, _ = validate(raw, sectors=("Energy", "Utilities"))
    assert table["bond_id"][:3].tolist() == [0, 1, 2]  # numbered in sorted text order: XS10, XS2, XS3
    assert table["sector"][:3].tolist() == [0, 1, 1]  # codes travel with their rows: XS10 had 0, XS2 and XS3 had 1
    assert table.sectors == ("Energy", "Utilities")
    raw["bond_id"] = np.array(["007", "8", "9"] * 2)  # digit text is an integer id
    table, _ = validate(raw, sectors=("Energy", "Utilities"))
    assert set(table["bond_id"]) == {7, 8, 9}


def test_on_invalid_must_be_known():
    with pytest.raises(DataValidationError, match="'on_invalid' parameter of validate must be 'raise' or 'drop'"):
        validate(raw_rows(), on_invalid="ignore")

"""split_valid: cast bronze strings to the model's types, keep valid rows typed, reject the rest with the reason."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lakehouse.quality.validation import ROW_ID, cast_text, cast_texts, model_dtypes, split_valid
from schemas.tpch import Lineitem, Orders

GOOD_ORDER = {
    "o_orderkey": "1",
    "o_custkey": "370",
    "o_orderstatus": "O",
    "o_totalprice": "172799.49",
    "o_orderdate": "1996-01-02",
    "o_orderpriority": "5-LOW",
    "o_clerk": "Clerk#000000951",
    "o_shippriority": "0",
    "o_comment": "nstructions sleep furiously among",
}
GOOD_LINE = {
    "l_orderkey": "1", "l_partkey": "1552", "l_suppkey": "93", "l_linenumber": "1", "l_quantity": "17",
    "l_extendedprice": "24710.35", "l_discount": "0.04", "l_tax": "0.02", "l_returnflag": "N", "l_linestatus": "O",
    "l_shipdate": "1996-03-13", "l_commitdate": "1996-02-12", "l_receiptdate": "1996-03-22",
    "l_shipinstruct": "DELIVER IN PERSON", "l_shipmode": "TRUCK", "l_comment": "egular courts above the",
}


def _orders(*changes: dict[str, Any]) -> pl.DataFrame:
    return pl.DataFrame([{**GOOD_ORDER, **c} for c in changes], schema={c: pl.String for c in GOOD_ORDER})


def _record(rejected: pl.DataFrame, row: int) -> dict[str, Any]:
    found = rejected.filter(pl.col(ROW_ID) == row).to_dicts()
    assert len(found) == 1, found
    return found[0]


def test_valid_rows_are_typed_in_model_order_and_other_columns_pass_through() -> None:
    # given bronze strings (with whitespace around numbers) and a lineage column the model does not know
    batch = _orders({}, {"o_orderkey": " 2 ", "o_totalprice": " 10.5"}).with_columns(
        pl.lit("raw/orders/a.csv").alias("_source_file")
    )

    split = split_valid(batch, Orders)

    assert split.rejected.height == 0
    assert split.valid.schema == pl.Schema({**model_dtypes(Orders), "_source_file": pl.String()})
    assert split.valid.get_column("o_orderkey").to_list() == [1, 2]
    assert split.valid.get_column("o_totalprice").to_list() == [172799.49, 10.5]
    assert split.valid.get_column("o_orderdate").to_list() == [dt.date(1996, 1, 2)] * 2
    assert split.valid.get_column("_source_file").to_list() == ["raw/orders/a.csv"] * 2


def test_each_kind_of_failure_is_named_with_its_column_and_original_value() -> None:
    # given one good row and one row per failure kind
    batch = _orders(
        {},
        {"o_orderkey": "abc"},  # not an integer
        {"o_totalprice": "12,5"},  # not a float
        {"o_orderdate": "1995-13-45"},  # not a date
        {"o_orderstatus": "X"},  # not in the allowed set
        {"o_totalprice": "-0.01"},  # below the range
        {"o_custkey": ""},  # required and empty
        {"o_comment": None, "o_shippriority": ""},  # nullable columns may be empty: valid
    )

    split = split_valid(batch, Orders)

    assert split.valid.height == 2
    assert split.valid.get_column("o_shippriority").to_list() == [0, None]
    got = {r[ROW_ID]: (r["check"], r["column"], r["value"]) for r in split.rejected.to_dicts()}
    assert got == {
        1: ("dtype('Int64')", "o_orderkey", "abc"),
        2: ("dtype('Float64')", "o_totalprice", "12,5"),
        3: ("dtype('Date')", "o_orderdate", "1995-13-45"),
        4: ("isin(['F', 'O', 'P'])", "o_orderstatus", "X"),
        5: ("greater_than_or_equal_to(0)", "o_totalprice", "-0.01"),
        6: ("not_nullable", "o_custkey", None),
    }


def test_upper_bound_rule() -> None:
    batch = pl.DataFrame([GOOD_LINE, {**GOOD_LINE, "l_discount": "1.5"}, {**GOOD_LINE, "l_tax": "1"}])
    split = split_valid(batch, Lineitem)
    assert split.valid.height == 2
    record = _record(split.rejected, 1)
    assert (record["check"], record["column"], record["value"]) == ("less_than_or_equal_to(1)", "l_discount", "1.5")


def test_a_row_failing_several_checks_gives_one_record_listing_every_failure() -> None:
    # given a row with a bad key, a bad status and a negative price
    batch = _orders({}, {"o_orderkey": "abc", "o_orderstatus": "X", "o_totalprice": "-1"})

    split = split_valid(batch, Orders)

    assert split.valid.height == 1 and split.rejected.height == 1
    record = _record(split.rejected, 1)
    # the type failure comes first: it is the root cause of the key's not-null failure
    assert (record["check"], record["column"], record["value"]) == ("dtype('Int64')", "o_orderkey", "abc")
    failures = {(f["check"], f["column"]) for f in json.loads(record["failures"])}
    assert failures >= {
        ("dtype('Int64')", "o_orderkey"),
        ("isin(['F', 'O', 'P'])", "o_orderstatus"),
        ("greater_than_or_equal_to(0)", "o_totalprice"),
    }


def test_empty_batch() -> None:
    split = split_valid(_orders().clear(), Orders)
    assert split.valid.height == 0 and split.rejected.height == 0
    assert split.valid.schema == pl.Schema(model_dtypes(Orders))


# --- property: split_valid agrees with an independent plain-Python reading of the Orders rules ---------------------

_INT = re.compile(r"-?\d+")
_FLOAT = re.compile(r"-?\d+(\.\d+)?")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _int(v: str | None) -> tuple[bool, int | None]:
    """(parses, value) after stripping; empty is null."""
    s = (v or "").strip()
    if not s:
        return True, None
    if not _INT.fullmatch(s) or not -(2**63) <= int(s) < 2**63:
        return False, None
    return True, int(s)


def _float(v: str | None) -> tuple[bool, float | None]:
    s = (v or "").strip()
    if not s:
        return True, None
    return (True, float(s)) if _FLOAT.fullmatch(s) else (False, None)


def _date(v: str | None) -> tuple[bool, dt.date | None]:
    s = (v or "").strip()
    if not s:
        return True, None
    if not _DATE.fullmatch(s):
        return False, None
    try:
        return True, dt.date(int(s[:4]), int(s[5:7]), int(s[8:]))
    except ValueError:
        return False, None


def reference_rejects(row: dict[str, str | None]) -> bool:
    ok_key, key = _int(row["o_orderkey"])
    ok_cust, cust = _int(row["o_custkey"])
    ok_price, price = _float(row["o_totalprice"])
    ok_date, date = _date(row["o_orderdate"])
    ok_ship, _ = _int(row["o_shippriority"])
    if not (ok_key and ok_cust and ok_price and ok_date and ok_ship):
        return True
    if key is None or cust is None or price is None or date is None:
        return True
    too_big = price >= 1e15  # schemas.tpch.MAX_AMOUNT: money is finite
    return key < 0 or cust < 0 or price < 0 or too_big or row["o_orderstatus"] not in ("F", "O", "P")


_BAD_NUMBER = st.sampled_from(["abc", "1.5", "12a", "1_000", "9" * 25, "0x10", "--1", "1,5", "nan", ""])
keys = st.one_of(
    st.integers(0, 2**62).map(str),
    st.integers(-(10**6), -1).map(str),
    st.integers(0, 10**6).map(lambda i: f" {i} "),
    st.none(),
    _BAD_NUMBER,
)
prices = st.one_of(
    st.floats(0, 1e9, allow_nan=False).map(lambda x: f"{x:.2f}"),
    st.floats(-1e6, -0.01).map(lambda x: f"{x:.2f}"),
    st.none(),
    _BAD_NUMBER,
)
dates = st.one_of(
    st.dates(dt.date(1900, 1, 1), dt.date(2100, 12, 31)).map(dt.date.isoformat),
    st.sampled_from(["1995-13-45", "1995-02-30", "19950101", "1995/01/01", "yesterday", "", " 1995-01-01 "]),
    st.none(),
)
statuses = st.one_of(st.sampled_from(["F", "O", "P", "X", "f", "", " F"]), st.none())
texts = st.one_of(st.none(), st.text(max_size=8))
ship = st.one_of(st.none(), st.integers(-5, 5).map(str), st.sampled_from(["", " ", "abc", "9" * 25]))
order_rows = st.fixed_dictionaries(
    {
        "o_orderkey": keys,
        "o_custkey": keys,
        "o_orderstatus": statuses,
        "o_totalprice": prices,
        "o_orderdate": dates,
        "o_orderpriority": texts,
        "o_clerk": texts,
        "o_shippriority": ship,
        "o_comment": texts,
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(order_rows, max_size=25))
def test_property_rows_are_rejected_exactly_when_a_rule_fails(rows: list[dict[str, str | None]]) -> None:
    # given a batch of orders-like string rows, some bad
    batch = pl.DataFrame(rows, schema={c: pl.String for c in GOOD_ORDER})

    # when it is split
    split = split_valid(batch, Orders)

    # then every row is accounted for once, and rejected exactly when the plain-Python rules reject it
    assert split.valid.height + split.rejected.height == len(rows)
    expected_rejected = [i for i, r in enumerate(rows) if reference_rejects(r)]
    assert split.rejected.get_column(ROW_ID).to_list() == expected_rejected
    kept = [r for r in rows if not reference_rejects(r)]
    assert split.valid.get_column("o_orderkey").to_list() == [_int(r["o_orderkey"])[1] for r in kept]
    assert split.valid.get_column("o_totalprice").to_list() == [_float(r["o_totalprice"])[1] for r in kept]
    assert split.valid.get_column("o_orderdate").to_list() == [_date(r["o_orderdate"])[1] for r in kept]
    assert split.valid.schema == pl.Schema(model_dtypes(Orders))


def test_infinite_and_nan_amounts_are_rejected() -> None:
    # given orders whose total price is not a finite number
    good = {"o_orderkey": "1", "o_custkey": "1", "o_orderstatus": "F", "o_totalprice": "1.5",
            "o_orderdate": "1995-01-01", "o_orderpriority": "a", "o_clerk": "c", "o_shippriority": "0",
            "o_comment": "z"}
    rows = [good] + [{**good, "o_totalprice": v} for v in ("inf", "-inf", "NaN")]

    split = split_valid(pl.DataFrame(rows), Orders)

    # then only the finite one is valid, and each other one is rejected on o_totalprice with its landed value
    assert split.valid.height == 1
    assert split.rejected.select("column", "value").to_dicts() == [
        {"column": "o_totalprice", "value": v} for v in ("inf", "-inf", "NaN")
    ]


TEXTS = st.one_of(st.none(), st.sampled_from(["", " ", "  7 ", "7", "-3", "1.5", " 1.5", "x", "2024-02-29",
                                              " 2024-02-29 ", "2024-13-01", "2024-02-29T10:00:00Z", "1e3", "nan"]))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(TEXTS, TEXTS, TEXTS, TEXTS), min_size=1, max_size=30))
def test_the_one_pass_cast_gives_what_trimming_every_value_gives(rows: list[tuple[Any, ...]]) -> None:
    # (the cast tries each value as landed first and trims only columns where some value did not parse)
    dtypes = {"i": pl.Int64, "f": pl.Float64, "d": pl.Date, "t": pl.Datetime("us", "UTC")}
    df = pl.DataFrame(rows, schema={c: pl.String for c in dtypes}, orient="row")
    assert cast_texts(df, dtypes).equals(df.with_columns(cast_text(c, t) for c, t in dtypes.items()))

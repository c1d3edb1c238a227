"""Row rule actions from the model: warn keeps the row and reports it, quarantine rejects it, fail fails the run."""

from __future__ import annotations

from typing import Any, ClassVar

import pandera.polars as pa
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lakehouse.errors import ConfigError
from lakehouse.quality.validation import ROW_ID, split_valid
from schemas.tpch import Lineitem, Orders

GOOD_LINE = {
    "l_orderkey": "1", "l_partkey": "1552", "l_suppkey": "93", "l_linenumber": "1", "l_quantity": "17",
    "l_extendedprice": "24710.35", "l_discount": "0.04", "l_tax": "0.02", "l_returnflag": "N", "l_linestatus": "O",
    "l_shipdate": "1996-03-13", "l_commitdate": "1996-02-12", "l_receiptdate": "1996-03-22",
    "l_shipinstruct": "DELIVER IN PERSON", "l_shipmode": "TRUCK", "l_comment": "egular courts above the",
}


def _lines(discounts: list[str]) -> pl.DataFrame:
    rows = [{**GOOD_LINE, "l_linenumber": str(i + 1), "l_discount": d} for i, d in enumerate(discounts)]
    return pl.DataFrame(rows, schema={c: pl.String for c in GOOD_LINE})


def test_a_warn_rule_keeps_the_row_and_reports_it() -> None:
    # given lines with a usual discount, an unusual one (warn), an impossible one (quarantine) and junk
    split = split_valid(_lines(["0.04", "0.15", "1.5", "abc"]), Lineitem)

    # then the unusual line is kept and reported, the impossible and the junk ones are quarantined
    assert split.valid.get_column("l_discount").to_list() == [0.04, 0.15]
    assert split.warned.select(ROW_ID, "check", "column", "value").to_dicts() == [
        {ROW_ID: 1, "check": "usual_discount", "column": "l_discount", "value": "0.15"}
    ]
    assert split.rejected.select(ROW_ID, "check", "action").to_dicts() == [
        {ROW_ID: 2, "check": "less_than_or_equal_to(1)", "action": "quarantine"},
        {ROW_ID: 3, "check": "dtype('Float64')", "action": "quarantine"},
    ]
    # a rejected row lists the warn rule it also failed, after the rule that rejected it
    assert "usual_discount" in split.rejected.get_column("failures")[0]
    assert split.failing.height == 0


class StrictOrders(Orders):
    class Config:
        metadata: ClassVar[dict[str, Any]] = {
            "actions": {"o_totalprice.greater_than_or_equal_to": "fail", "dtype": "fail"}
        }


def test_a_fail_rule_marks_the_row_failing() -> None:
    good = {"o_orderkey": "1", "o_custkey": "1", "o_orderstatus": "F", "o_totalprice": "1.5",
            "o_orderdate": "1995-01-01", "o_orderpriority": "a", "o_clerk": "c", "o_shippriority": "0",
            "o_comment": "z"}
    batch = pl.DataFrame([good, {**good, "o_totalprice": "-1"}, {**good, "o_orderstatus": "X"},
                          {**good, "o_custkey": "x"}])

    split = split_valid(batch, StrictOrders)

    # the negative price fails (its column's rule), the bad status is only quarantined, the bad key fails (dtype)
    assert split.failing.select(ROW_ID, "column").to_dicts() == [
        {ROW_ID: 1, "column": "o_totalprice"}, {ROW_ID: 3, "column": "o_custkey"}
    ]
    assert split.rejected.filter(pl.col("action") == "quarantine").get_column(ROW_ID).to_list() == [2]


def test_an_unknown_action_is_refused_naming_the_model_and_check() -> None:
    class Odd(Orders):
        class Config:
            metadata: ClassVar[dict[str, Any]] = {"actions": {"isin": "drop"}}

    with pytest.raises(ConfigError, match=r"Odd.*'drop'.*'isin'"):
        split_valid(pl.DataFrame({c: ["1"] for c in Orders.to_schema().columns}), Odd)


class WarnIsin(pa.DataFrameModel):
    k: pl.Int64
    status: pl.String = pa.Field(isin=["A", "B"])

    class Config:
        metadata: ClassVar[dict[str, Any]] = {"actions": {"isin": "warn", "dtype": "warn"}}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["1", "2", "x", "", " 3"]), st.sampled_from(["A", "B", "C", None])),
                max_size=30))
def test_property_warned_rows_stay_rejected_rows_leave_and_none_is_lost(rows: list[tuple[str, str | None]]) -> None:
    batch = pl.DataFrame({"k": [r[0] for r in rows], "status": [r[1] for r in rows]},
                         schema={"k": pl.String, "status": pl.String})

    split = split_valid(batch, WarnIsin)

    # a dtype failure cannot be kept (warn is quarantine for it); a null status fails not_nullable (quarantine)
    def rejected(r: tuple[str, str | None]) -> bool:
        return r[0].strip() in ("x", "") or r[1] is None

    def warned(r: tuple[str, str | None]) -> bool:
        return not rejected(r) and r[1] not in ("A", "B")

    assert split.valid.height + split.rejected.height == len(rows)
    assert split.rejected.get_column(ROW_ID).to_list() == [i for i, r in enumerate(rows) if rejected(r)]
    assert split.warned.get_column(ROW_ID).to_list() == [i for i, r in enumerate(rows) if warned(r)]
    assert split.valid.get_column("status").to_list() == [r[1] for r in rows if not rejected(r)]


def test_action_keys_must_name_a_check_of_the_model() -> None:
    from lakehouse.quality.validation import validate_actions

    class Typo(Orders):
        class Config:
            metadata: ClassVar[dict[str, Any]] = {"actions": {"usual_discont": "fail"}}

    class Ambiguous(Lineitem):
        class Config:
            metadata: ClassVar[dict[str, Any]] = {"actions": {"less_than_or_equal_to": "fail"}}

    class Fine(Lineitem):
        class Config:
            metadata: ClassVar[dict[str, Any]] = {"actions": {"l_tax.less_than_or_equal_to": "fail", "dtype": "fail"}}

    with pytest.raises(ConfigError, match="'usual_discont' names no check of the model"):
        validate_actions(Typo)
    with pytest.raises(ConfigError, match=r"several columns \(l_discount, l_tax\); write column\.less_than"):
        validate_actions(Ambiguous)
    validate_actions(Fine)

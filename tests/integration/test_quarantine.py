"""A landed file with bad rows: each bad row ends in quarantine with the reason and where it came from, none reaches
silver, the counts say so exactly, and a rerun quarantines nothing twice."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

import lakehouse
from lakehouse.ops.query import query
from lakehouse.storage import Storage
from tests.conftest import ANY_SHARE, Lake

pytestmark = pytest.mark.integration

ORDERS_FILE = "raw/orders/1999-01/part-0.csv"
LINES_FILE = "raw/lineitem/1999-01/part-0.csv"
HEADER = "o_orderkey,o_custkey,o_orderstatus,o_totalprice,o_orderdate,o_orderpriority,o_clerk,o_shippriority,o_comment"
LINE_HEADER = (
    "l_orderkey,l_partkey,l_suppkey,l_linenumber,l_quantity,l_extendedprice,l_discount,l_tax,l_returnflag,"
    "l_linestatus,l_shipdate,l_commitdate,l_receiptdate,l_shipinstruct,l_shipmode,l_comment"
)
# line number -> the line; good orders get keys far above TPC-H's
ORDER_LINES = {
    2: "9000001,{c},O,1000.50,1999-01-05,1-URGENT,Clerk#1,0,good one",
    3: "9000002,{c},X,10.00,1999-01-06,1-URGENT,Clerk#1,0,unknown status",
    4: "9000003,{c},F,2000.25,1999-01-07,2-HIGH,Clerk#2,0,good two",
    5: "9000004,{c},O,-5.00,1999-01-08,1-URGENT,Clerk#1,0,negative price",
    6: "9000005,{c},O,10.00",
    7: "abc,{c},O,10.00,1999-01-09,1-URGENT,Clerk#1,0,key not an integer",
    8: "9000007,{c},O,10.00,1995-13-45,1-URGENT,Clerk#1,0,no such date",
    9: "9000008,{c},P,3000.75,1999-01-10,3-MEDIUM,Clerk#3,0,good three",
}
BAD_ORDERS = {
    # line: (stage, check, column, value)
    3: ("silver", "isin(['F', 'O', 'P'])", "o_orderstatus", "X"),
    5: ("silver", "greater_than_or_equal_to(0)", "o_totalprice", "-5.00"),  # the value as landed
    6: ("bronze", "malformed_record", None, None),
    7: ("silver", "dtype('Int64')", "o_orderkey", "abc"),
    8: ("silver", "dtype('Date')", "o_orderdate", "1995-13-45"),
}
LINES = {
    2: "9000001,1,2,1,10,1000.00,0.05,0.01,N,O,1999-01-20,1999-01-25,1999-01-30,NONE,MAIL,good line",
    3: "9000001,1,2,2,10,1000.00,1.5,0.01,N,O,1999-01-21,1999-01-25,1999-01-30,NONE,MAIL,discount above 1",
}


@dataclass(frozen=True)
class Landed:
    lake: Lake
    report: lakehouse.RunReport
    before: dict[str, int]
    customer: str


def _quarantine(root: Path, name: str) -> pl.DataFrame:
    return pl.read_delta(str(root / "quarantine" / name)).sort("_source_line")


@pytest.fixture(scope="module")
def landed(tpch_lake: Lake, tmp_path_factory: pytest.TempPathFactory) -> Landed:
    """The processed TPC-H lake plus one orders file and one lineitem file with bad rows, processed."""
    import shutil

    root = tmp_path_factory.mktemp("quarantine") / "lake"
    shutil.copytree(tpch_lake.root, root)
    # the drops below are mostly bad rows: the default quarantined-share gate is loosened (see ANY_SHARE)
    settings = dataclasses.replace(tpch_lake.settings.with_root(str(root)), max_quarantined_share=ANY_SHARE)
    lake = Lake(root=root, settings=settings, report=None)
    customer = pl.read_csv(lake.raw / "customer/customer.csv", infer_schema=False).get_column("c_custkey")[0]
    (root / ORDERS_FILE).parent.mkdir(parents=True)
    lines = [HEADER] + [ORDER_LINES[n].format(c=customer) for n in sorted(ORDER_LINES)]
    (root / ORDERS_FILE).write_text("\n".join(lines) + "\n")
    (root / LINES_FILE).parent.mkdir(parents=True)
    (root / LINES_FILE).write_text("\n".join([LINE_HEADER, LINES[2], LINES[3]]) + "\n")
    before = {
        "silver.orders": pl.read_delta(str(root / "silver/orders")).height,
        "silver.lineitem": pl.read_delta(str(root / "silver/lineitem")).height,
    }
    report = lakehouse.run(lake.settings)
    assert report.ok, report.error
    return Landed(lake=lake, report=report, before=before, customer=customer)


def test_bad_order_rows_are_quarantined_with_check_column_value_and_source(landed: Landed) -> None:
    q = _quarantine(landed.lake.root, "orders")
    got = {r["_source_line"]: (r["stage"], r["check"], r["column"], r["value"]) for r in q.to_dicts()}
    assert got == BAD_ORDERS
    assert q.get_column("_source_file").to_list() == [ORDERS_FILE] * len(BAD_ORDERS)
    assert set(q.get_column("_run_id").to_list()) == {landed.report.run_id}

    rows = {r["_source_line"]: r for r in q.to_dicts()}
    # the malformed line is kept as its raw text, with the reason
    assert rows[6]["row"] == ORDER_LINES[6].format(c=landed.customer)
    assert json.loads(rows[6]["failures"]) == [{"check": "malformed_record", "reason": "expected 9 fields, found 4"}]
    # a rejected row keeps its original string values, so it can be fixed and replayed
    replay = json.loads(rows[7]["row"])
    assert replay["o_orderkey"] == "abc" and replay["o_comment"] == "key not an integer"
    assert set(replay) == set(HEADER.split(","))
    assert {f["check"] for f in json.loads(rows[5]["failures"])} == {"greater_than_or_equal_to(0)"}
    assert json.loads(rows[5]["row"])["o_totalprice"] == "-5.00"


def test_bad_line_item_is_quarantined(landed: Landed) -> None:
    q = _quarantine(landed.lake.root, "lineitem")
    assert q.select("stage", "check", "column", "value", "_source_file", "_source_line").to_dicts() == [
        {"stage": "silver", "check": "less_than_or_equal_to(1)", "column": "l_discount", "value": "1.5",
         "_source_file": LINES_FILE, "_source_line": 3}
    ]


def test_no_bad_row_reaches_silver_and_the_good_ones_do(landed: Landed) -> None:
    root = landed.lake.root
    orders = pl.read_delta(str(root / "silver/orders")).filter(pl.col("_source_file") == ORDERS_FILE)
    assert sorted(orders.get_column("_source_line").to_list()) == [2, 4, 9]
    assert sorted(orders.get_column("o_orderkey").to_list()) == [9000001, 9000003, 9000008]
    assert orders.get_column("o_totalprice").sort().to_list() == [1000.50, 2000.25, 3000.75]
    lines = pl.read_delta(str(root / "silver/lineitem")).filter(pl.col("_source_file") == LINES_FILE)
    assert lines.select("l_linenumber", "_source_line").to_dicts() == [{"l_linenumber": 1, "_source_line": 2}]
    assert pl.read_delta(str(root / "silver/orders")).height == landed.before["silver.orders"] + 3
    assert pl.read_delta(str(root / "silver/lineitem")).height == landed.before["silver.lineitem"] + 1
    # and the good rows flow on to gold
    gold = pl.read_delta(str(root / "gold/revenue_by_nation_month")).filter(
        pl.col("order_month") == pl.date(1999, 1, 1)
    )
    assert gold.select("order_count", "lineitem_count").to_dicts() == [{"order_count": 1, "lineitem_count": 1}]
    assert gold.get_column("revenue").to_list() == pytest.approx([1000.00 * (1 - 0.05)])


def test_counts_match_exactly(landed: Landed) -> None:
    r = landed.report
    counts = {
        t: (r.result(t).rows_in, r.result(t).rows_written, r.result(t).rows_quarantined, r.result(t).rows_duplicate)
        for t in ("bronze.orders", "silver.orders", "bronze.lineitem", "silver.lineitem")
    }
    assert counts == {
        "bronze.orders": (8, 7, 1, 0),
        "silver.orders": (7, 3, 4, 0),
        "bronze.lineitem": (2, 2, 0, 0),
        "silver.lineitem": (2, 1, 1, 0),
    }
    recorded = query(
        Storage(str(landed.lake.root)),
        "SELECT table_name, rows_in, rows_written, rows_quarantined, rows_duplicate FROM _meta.runs "
        f"WHERE run_id = '{r.run_id}' AND table_name IN ('bronze.orders', 'silver.orders', 'bronze.lineitem', "
        "'silver.lineitem')",
    ).to_pylist()
    assert {x["table_name"]: tuple(list(x.values())[1:]) for x in recorded} == counts
    # quarantine tables hold exactly the counted rows
    assert _quarantine(landed.lake.root, "orders").height == 1 + 4
    assert _quarantine(landed.lake.root, "lineitem").height == 1


def test_rerun_quarantines_nothing_twice(landed: Landed) -> None:
    # this test changes the lake (a new _meta.runs version) but no table it or the others read
    root = landed.lake.root
    layers = ("bronze", "silver", "gold", "quarantine")
    tables = [f"{layer}/{d.name}" for layer in layers for d in (root / layer).iterdir()]
    before = {t: DeltaTable(str(root / t)).version() for t in tables}
    assert {"quarantine/orders", "quarantine/lineitem"} <= set(tables)

    report = lakehouse.run(landed.lake.settings)

    assert report.ok
    assert {x.status for x in report.results} == {"skipped"}
    assert {t: DeltaTable(str(root / t)).version() for t in tables} == before
    assert _quarantine(root, "orders").height == 5

"""Table checks from the models and the settings, on real runs over a processed TPC-H lake: referential integrity,
drift, freshness, batch size, empty batches, ingest lag, and row rules that warn or fail. Each lands the bad input
and asserts the recorded check, the run's outcome and what was (not) committed."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from collections.abc import Callable
from typing import Any, ClassVar

import polars as pl
import pytest

import lakehouse
from lakehouse import QualityGateFailed
from lakehouse.errors import ConfigError
from tests.conftest import Lake
from tests.harness import versions

pytestmark = pytest.mark.integration

ORDERS = ("o_orderkey,o_custkey,o_orderstatus,o_totalprice,o_orderdate,o_orderpriority,o_clerk,o_shippriority,"
          "o_comment\n")
LINES = ("l_orderkey,l_partkey,l_suppkey,l_linenumber,l_quantity,l_extendedprice,l_discount,l_tax,l_returnflag,"
         "l_linestatus,l_shipdate,l_commitdate,l_receiptdate,l_shipinstruct,l_shipmode,l_comment\n")


def order(key: int, *, cust: int = 1, price: str = "1000.00", date: str = "1992-08-10") -> str:
    return f"{key},{cust},O,{price},{date},1-URGENT,Clerk#000000001,0,x\n"


def line(key: int, number: int = 1, *, discount: str = "0.04", ship: str = "1992-08-20") -> str:
    return f"{key},1,1,{number},1,100.00,{discount},0.02,N,O,{ship},{ship},{ship},NONE,AIR,x\n"


def land(lake: Lake, path: str, text: str) -> None:
    target = lake.raw / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def checks_of(lake: Lake, run_id: str, table: str | None = None) -> dict[str, dict[str, Any]]:
    rows = pl.read_delta(str(lake.root / "_meta/checks")).filter(pl.col("run_id") == run_id)
    if table:
        rows = rows.filter(pl.col("table_name") == table)
    return {r["check"]: r for r in rows.to_dicts()}


def test_orphans_are_reported_with_count_and_sample_and_can_fail_the_run(lake_copy: Callable[[], Lake]) -> None:
    # given orders of a customer that does not exist and lines of an order that does not exist
    lake = lake_copy()
    orphans = "".join(order(9500000 + i, cust=99999990 + i) for i in range(10))
    land(lake, "orders/drop/orphans.csv", ORDERS + orphans + order(9500010, cust=1))
    land(lake, "lineitem/drop/orphans.csv", LINES + "".join(line(9599999, n) for n in (1, 2, 3)) + line(9500000))

    # when the pipeline runs, with broadcasts so small that the batch's keys are checked in 3 hash buckets
    report = lakehouse.run(dataclasses.replace(lake.settings, broadcast_max_rows=1))

    # then the run goes on (the default action is warn) and each orphan check says how many and which
    assert report.ok, report.error
    orders = checks_of(lake, report.run_id, "silver.orders")["references(o_custkey -> customer.c_custkey)"]
    assert (orders["observed"], orders["action"], orders["passed"]) == (10.0, "warn", False)
    assert orders["message"] == (
        "11 new rows checked against silver.customer.c_custkey: 10 row(s) have a o_custkey with no silver.customer "
        "row (e.g. o_custkey = 99999990, 99999991, 99999992, 99999993, 99999994)"
    )
    lines = checks_of(lake, report.run_id, "silver.lineitem")["references(l_orderkey -> orders.o_orderkey)"]
    assert (lines["observed"], lines["passed"]) == (3.0, False)
    assert "(e.g. l_orderkey = 9599999)" in lines["message"]
    # the orphans are in silver all the same: warn keeps them
    keys = pl.read_delta(str(lake.root / "silver/orders")).get_column("o_orderkey")
    assert keys.is_in(range(9500000, 9500011)).sum() == 11
    # and gold counts the revenue of an order whose customer is unknown, under a null nation
    unknown = pl.read_delta(str(lake.root / "gold/revenue_by_nation_month")).filter(pl.col("nation").is_null())
    assert unknown.select("order_month", "revenue", "order_count", "lineitem_count").rows() == [
        (dt.date(1992, 8, 1), 96.0, 1, 1)]

    # and with the action set to fail, the next orphan stops the run before silver.orders commits
    land(lake, "orders/drop/more.csv", ORDERS + order(9500003, cust=77777777))
    before = versions(lake.root)
    report = lakehouse.run(dataclasses.replace(lake.settings, check_actions={"orders.references": "fail"}))
    assert isinstance(report.error, QualityGateFailed)
    assert str(report.error).startswith("silver.orders: quality check references(o_custkey -> customer.c_custkey) "
                                        "failed:")
    assert versions(lake.root)["silver.orders"] == before["silver.orders"]


def test_drift_against_the_previous_month_is_reported_naming_month_and_column(lake_copy: Callable[[], Lake]) -> None:
    # given a new month of orders priced ten times the usual
    lake = lake_copy()
    rows = "".join(order(9600000 + i, cust=1 + i, price="1500000.00", date=f"1992-09-{1 + i % 28:02d}")
                   for i in range(200))
    land(lake, "orders/1992-09/part-0.csv", ORDERS + rows)

    report = lakehouse.run(lake.settings)

    # then the mean and quantile drift checks fail (warn) naming the month pair and the column; null shares held
    assert report.ok, report.error
    found = checks_of(lake, report.run_id, "silver.orders")
    mean = found["drift_mean"]
    assert not mean["passed"] and mean["action"] == "warn" and mean["observed"] > 5
    assert "1992-09 vs 1992-08: o_totalprice mean 1.5e+06" in mean["message"]
    assert not found["drift_quantiles"]["passed"]
    assert found["drift_null_share"]["passed"]
    # 200 orders against the month before's: the row count is within 50%
    august = pl.read_delta(str(lake.root / "silver/orders")).filter(
        pl.col("o_orderdate").dt.strftime("%Y-%m") == "1992-08").height
    assert 200 / 1.5 <= august <= 200 / 0.5 and found["drift_rows"]["passed"]
    assert f"1992-09 vs 1992-08: 200 rows, was {august}" in found["drift_rows"]["message"]


def test_freshness_is_measured_against_the_logical_date_even_when_nothing_is_new(
    lake_copy: Callable[[], Lake],
) -> None:
    # given a processed lake whose newest order is from the end of 1992-08, with a 10-day SLA on orders
    lake = lake_copy()
    newest = pl.read_delta(str(lake.root / "silver/orders")).get_column("o_orderdate").max()
    assert isinstance(newest, dt.date)
    settings = dataclasses.replace(lake.settings, freshness_days={"orders": 10})

    # when nothing new arrives and the run is for 5 days later, then 30 days later
    fresh = lakehouse.run(settings, logical_date=newest + dt.timedelta(days=5))
    stale = lakehouse.run(settings, logical_date=newest + dt.timedelta(days=30))

    # then the first passes and the second fails (warn by default), both recorded with the age in days
    assert fresh.ok and stale.ok
    ok = checks_of(lake, fresh.run_id, "silver.orders")["freshness"]
    assert (ok["observed"], ok["threshold"], ok["passed"]) == (5.0, 10.0, True)
    late = checks_of(lake, stale.run_id, "silver.orders")["freshness"]
    assert (late["observed"], late["passed"], late["action"]) == (30.0, False, "warn")
    assert f"newest event date {newest.isoformat()} is 30 days before" in late["message"]

    # and as a failing SLA it fails the run, naming the table and the check
    strict = dataclasses.replace(settings, check_actions={"freshness": "fail"})
    report = lakehouse.run(strict, logical_date=newest + dt.timedelta(days=30))
    assert isinstance(report.error, QualityGateFailed)
    assert "silver.orders: quality check freshness failed" in str(report.error)


def test_a_batch_outside_its_row_range_or_empty_when_expected_fails_before_commit(
    lake_copy: Callable[[], Lake],
) -> None:
    lake = lake_copy()
    before = versions(lake.root)

    # given a source expected to deliver every run, and nothing new: the run fails on empty_batch
    report = lakehouse.run(dataclasses.replace(lake.settings, expect_delivery=("orders",)))
    assert isinstance(report.error, QualityGateFailed)
    assert "silver.orders: quality check empty_batch failed: no new rows although the source is expected to " \
           "deliver: nothing new in bronze.orders" in str(report.error)

    # given a batch of 8 orders where at most 5 are expected: the run fails naming the range, nothing committed
    land(lake, "orders/drop/big.csv", ORDERS + "".join(order(9700000 + i) for i in range(8)))
    report = lakehouse.run(dataclasses.replace(lake.settings, batch_rows={"orders": (1, 5)}))
    assert isinstance(report.error, QualityGateFailed)
    assert str(report.error) == ("silver.orders: quality check batch_rows failed: the batch brought 8 valid rows, "
                                 "outside the expected range [1, 5]")
    after = versions(lake.root)
    assert after["silver.orders"] == before["silver.orders"]
    assert after["gold.customer_lifetime_value"] == before["gold.customer_lifetime_value"]

    # and within the range the same batch goes through
    report = lakehouse.run(dataclasses.replace(lake.settings, batch_rows={"orders": (1, 10)}))
    assert report.ok, report.error
    assert checks_of(lake, report.run_id, "silver.orders")["batch_rows"]["passed"]


def test_ingest_lag_counts_waiting_files_and_the_age_of_the_oldest(lake_copy: Callable[[], Lake]) -> None:
    # given two landed files, one of them waiting for two hours, and a one-hour lag allowed
    lake = lake_copy()
    land(lake, "orders/drop/old.csv", ORDERS + order(9800001))
    land(lake, "orders/drop/new.csv", ORDERS + order(9800002))
    two_hours_ago = time.time() - 7200
    os.utime(lake.raw / "orders/drop/old.csv", (two_hours_ago, two_hours_ago))

    report = lakehouse.run(dataclasses.replace(lake.settings, max_ingest_lag_seconds={"*": 3600}))

    # then the run goes on (warn) and both the check and the run record say how far behind ingest was
    assert report.ok, report.error
    lag = checks_of(lake, report.run_id, "bronze.orders")["ingest_lag"]
    assert not lag["passed"] and lag["action"] == "warn" and 7200 <= lag["observed"] < 7300
    assert lag["message"].startswith("2 landed files not yet ingested; the oldest waited 72")
    assert checks_of(lake, report.run_id, "bronze.customer")["ingest_lag"]["passed"]
    runs = pl.read_delta(str(lake.root / "_meta/runs")).filter(pl.col("run_id") == report.run_id)
    row = runs.filter(pl.col("table_name") == "bronze.orders").row(0, named=True)
    assert row["files_pending"] == 2 and 7200 <= row["pending_seconds"] < 7300


def test_a_warn_rule_keeps_its_rows_and_reports_them(lake_copy: Callable[[], Lake]) -> None:
    # given lines with an unusual (but possible) discount of 15% and one impossible discount
    lake = lake_copy()
    land(lake, "lineitem/drop/discounts.csv",
         LINES + line(1, 91, discount="0.15") + line(1, 92, discount="0.15") + line(1, 93, discount="1.50"))

    # (one line in three impossible is far above the default 5% gate: loosened for this table)
    report = lakehouse.run(dataclasses.replace(lake.settings, max_quarantined_share={"lineitem": 1.0}))

    # then the unusual lines are in silver and reported; the impossible one is in quarantine
    assert report.ok, report.error
    warned = checks_of(lake, report.run_id, "silver.lineitem")["usual_discount on l_discount"]
    assert (warned["observed"], warned["action"], warned["passed"]) == (2.0, "warn", False)
    assert "e.g. value '0.15' in raw/lineitem/drop/discounts.csv line 2" in warned["message"]
    lines = pl.read_delta(str(lake.root / "silver/lineitem")).filter(pl.col("l_orderkey") == 1)
    assert sorted(lines.filter(pl.col("l_linenumber") > 90).get_column("l_linenumber").to_list()) == [91, 92]
    assert report.result("silver.lineitem").rows_quarantined == 1


def test_a_fail_rule_fails_the_run_naming_file_line_column_and_value(
    lake_copy: Callable[[], Lake], monkeypatch: pytest.MonkeyPatch
) -> None:
    import examples.tpch.pipeline
    from schemas.tpch import Orders

    class StrictOrders(Orders):  # defined here so Ray ships it by value
        class Config:
            metadata: ClassVar[dict[str, Any]] = {"actions": {"o_totalprice.greater_than_or_equal_to": "fail"}}

    pipeline = examples.tpch.pipeline.PIPELINE
    silver = tuple(dataclasses.replace(s, model=StrictOrders) if s.name == "orders" else s for s in pipeline.silver)
    monkeypatch.setattr(examples.tpch.pipeline, "PIPELINE", dataclasses.replace(pipeline, silver=silver))
    lake = lake_copy()
    land(lake, "orders/drop/neg.csv", ORDERS + order(9900001) + order(9900002, price="-3.00"))
    before = versions(lake.root)

    report = lakehouse.run(lake.settings)

    assert isinstance(report.error, QualityGateFailed)
    assert str(report.error) == (
        "silver.orders (raw/orders/drop/neg.csv): row check greater_than_or_equal_to(0) failed on column "
        "o_totalprice (value '-3.00') at line 3, 1 row(s) in this file; its action is fail"
    )
    after = versions(lake.root)
    assert after["silver.orders"] == before["silver.orders"]
    assert after.get("quarantine.orders") == before.get("quarantine.orders")
    # and the failed rule is in the run's checks
    failed = checks_of(lake, report.run_id, "silver.orders")["greater_than_or_equal_to(0) on o_totalprice"]
    assert (failed["observed"], failed["action"], failed["passed"]) == (1.0, "fail", False)


def test_an_ingest_lag_gate_that_fails_still_ingests(lake_copy: Callable[[], Lake]) -> None:
    # given a file waiting two hours and a lag check set to fail above one hour
    lake = lake_copy()
    land(lake, "orders/drop/old.csv", ORDERS + order(9800001))
    two_hours_ago = time.time() - 7200
    os.utime(lake.raw / "orders/drop/old.csv", (two_hours_ago, two_hours_ago))
    settings = dataclasses.replace(lake.settings, max_ingest_lag_seconds={"orders": 3600},
                                   check_actions={"ingest_lag": "fail"})
    before = versions(lake.root)

    report = lakehouse.run(settings)

    # then the run fails naming the check, but the waiting file was ingested: refusing it would only grow the lag
    assert isinstance(report.error, QualityGateFailed)
    assert str(report.error).startswith("bronze.orders: quality check ingest_lag failed: 1 landed files not yet "
                                        "ingested; the oldest waited 72")
    assert str(report.error).endswith(f"the waiting files were ingested all the same (version "
                                      f"{before['bronze.orders'] + 1})")
    assert versions(lake.root)["bronze.orders"] == before["bronze.orders"] + 1
    # and the next run has no lag and goes on to silver
    report = lakehouse.run(settings)
    assert report.ok, report.error
    assert pl.read_delta(str(lake.root / "silver/orders")).get_column("o_orderkey").is_in([9800001]).any()


def test_settings_naming_an_unknown_table_are_refused(tpch_lake: Lake) -> None:
    lake = tpch_lake  # refused while planning: nothing is written
    with pytest.raises(ConfigError, match="setting freshness_days names 'order', which is not a table"):
        lakehouse.run(dataclasses.replace(lake.settings, freshness_days={"order": 1}))
    with pytest.raises(ConfigError, match=r"check_actions: cannot apply 'orders\.fresh'"):
        lakehouse.run(dataclasses.replace(lake.settings, check_actions={"orders.fresh": "fail"}))
    with pytest.raises(ConfigError, match="freshness_days: customer has no event date"):
        lakehouse.run(dataclasses.replace(lake.settings, freshness_days={"customer": 1}))


def test_type_drift_quarantines_the_rows_and_above_the_share_fails_naming_file_column_and_value(
    lake_copy: Callable[[], Lake],
) -> None:
    # given an upstream change: o_totalprice now arrives as text in most rows of a drop
    lake = lake_copy()
    rows = [order(9910000 + i, price="N/A" if i % 4 else "10.00") for i in range(8)]  # 6 of 8 unparseable
    land(lake, "orders/drop/drifted.csv", ORDERS + "".join(rows))
    raw_before = {p: p.read_bytes() for p in lake.raw.rglob("*") if p.is_file()}
    before = versions(lake.root)

    # when the run has a 10% gate on orders
    report = lakehouse.run(dataclasses.replace(lake.settings, max_quarantined_share={"orders": 0.10}))

    # then it fails before silver.orders commits, naming the file, the column and an example value
    assert isinstance(report.error, QualityGateFailed)
    assert str(report.error) == (
        "silver.orders: quality check quarantined_share failed: 6 of 8 rows quarantined (75.00%), above the maximum "
        "of 10.00%; most often dtype('Float64') on column o_totalprice (6 rows), e.g. value 'N/A' in "
        "raw/orders/drop/drifted.csv line 3"
    )
    after = versions(lake.root)
    assert after["silver.orders"] == before["silver.orders"]
    assert after.get("quarantine.orders") == before.get("quarantine.orders")
    assert {p: p.read_bytes() for p in lake.raw.rglob("*") if p.is_file()} == raw_before

    # and with the gate loosened (one setting) the rows go to quarantine with the reason, the two good ones to silver
    report = lakehouse.run(dataclasses.replace(lake.settings, max_quarantined_share={"orders": 1.0}))
    assert report.ok, report.error
    assert report.result("silver.orders").rows_quarantined == 6
    held = pl.read_delta(str(lake.root / "quarantine/orders")).filter(pl.col("_run_id") == report.run_id)
    assert sorted(held.select("check", "column", "value", "_source_line").rows()) == [
        ("dtype('Float64')", "o_totalprice", "N/A", line) for line in (3, 4, 5, 7, 8, 9)
    ]
    keys = pl.read_delta(str(lake.root / "silver/orders")).get_column("o_orderkey")
    assert sorted(keys.filter(keys >= 9910000).to_list()) == [9910000, 9910004]

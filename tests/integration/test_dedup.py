"""Deduplication on declared keys: a later landed version of a row replaces the earlier one; two copies arriving in
one run are counted as duplicates and the later landed one wins."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import lakehouse
from tests.conftest import Lake
from tests.oracle import SORT

pytestmark = pytest.mark.integration

NEW_KEY = 9_100_001


def _silver_orders(lake: Lake, key: int) -> pl.DataFrame:
    return pl.read_delta(str(lake.root / "silver/orders")).filter(pl.col("o_orderkey") == key)


def _clv(lake: Lake, custkey: int) -> dict:
    rows = pl.read_delta(str(lake.root / "gold/customer_lifetime_value")).filter(pl.col("c_custkey") == custkey)
    assert rows.height == 1
    return rows.to_dicts()[0]


def test_updates_replace_and_in_run_copies_are_counted(lake_copy: Callable[[], Lake]) -> None:
    # given a processed lake and an existing order of March 1992
    lake = lake_copy()
    march = pl.read_csv(lake.raw / "orders/1992-03/part-0.csv", infer_schema=False)
    original = march.row(0, named=True)
    key, custkey = int(original["o_orderkey"]), int(original["o_custkey"])
    clv_before = _clv(lake, custkey)
    silver_before = pl.read_delta(str(lake.root / "silver/orders")).height

    # when a later drop brings an updated version of it plus a new order, and another file the same new order again
    updated = {**original, "o_totalprice": "1234.56", "o_comment": "price corrected"}
    new = {**original, "o_orderkey": str(NEW_KEY), "o_totalprice": "100.00", "o_comment": "first copy"}
    pl.DataFrame([updated, new]).write_csv(lake.raw / "orders/1992-03/part-1.csv")
    pl.DataFrame([{**new, "o_totalprice": "200.00", "o_comment": "second copy"}]).write_csv(
        lake.raw / "orders/1992-03/part-2.csv"
    )
    report = lakehouse.run(lake.settings)

    # then silver holds one row per key: the update replaced the old row, and of the two new copies the later one
    assert report.ok, report.error
    row = _silver_orders(lake, key)
    assert row.select("o_totalprice", "o_comment", "_source_file").to_dicts() == [
        {"o_totalprice": 1234.56, "o_comment": "price corrected", "_source_file": "raw/orders/1992-03/part-1.csv"}
    ]
    assert _silver_orders(lake, NEW_KEY).select("o_totalprice", "o_comment").to_dicts() == [
        {"o_totalprice": 200.0, "o_comment": "second copy"}
    ]
    orders = pl.read_delta(str(lake.root / "silver/orders"))
    assert orders.height == silver_before + 1
    assert orders.get_column("o_orderkey").is_unique().all()

    # and the counts say what happened: three rows in, two kept, one duplicate within the run
    s = report.result("silver.orders")
    assert (s.rows_in, s.rows_written, s.rows_quarantined, s.rows_duplicate) == (3, 2, 0, 1)
    assert report.result("bronze.orders").rows_written == 3
    assert s.partitions == 1

    # and gold follows: the customer's lifetime value has the corrected price and the new order
    clv = _clv(lake, custkey)
    assert clv["order_count"] == clv_before["order_count"] + 1
    assert clv["total_spent"] == pytest.approx(
        clv_before["total_spent"] - float(original["o_totalprice"]) + 1234.56 + 200.0
    )

    # when yet another version arrives in a later run
    pl.DataFrame([{**original, "o_totalprice": "999.99"}]).write_csv(lake.raw / "orders/1992-03/part-3.csv")
    report = lakehouse.run(lake.settings)

    # then it replaces the previous one (a later run's row wins), and nothing is counted as a duplicate
    assert report.ok, report.error
    assert _silver_orders(lake, key).get_column("o_totalprice").to_list() == [999.99]
    s = report.result("silver.orders")
    assert (s.rows_in, s.rows_written, s.rows_duplicate) == (1, 1, 0)
    assert pl.read_delta(str(lake.root / "silver/orders")).height == silver_before + 1


def test_an_update_that_moves_a_row_to_another_month_replaces_it(lake_copy: Callable[[], Lake]) -> None:
    # given a processed lake and an order of January 1992
    lake = lake_copy()
    original = pl.read_csv(lake.raw / "orders/1992-01/part-0.csv", infer_schema=False).row(0, named=True)
    key = int(original["o_orderkey"])

    # when a corrected version with a February order date lands
    moved = {**original, "o_orderdate": "1992-02-15", "o_totalprice": "99.99"}
    pl.DataFrame([moved]).write_csv(lake.raw / "orders/1992-02/part-1.csv")
    report = lakehouse.run(lake.settings)

    # then silver has exactly one row for the key: the corrected one, in February
    assert report.ok, report.error
    rows = _silver_orders(lake, key)
    assert rows.select("o_totalprice", "order_month").to_dicts() == [
        {"o_totalprice": 99.99, "order_month": dt.date(1992, 2, 1)}
    ]


def test_one_key_landed_in_two_months_in_one_run_keeps_only_the_latest(lake_copy: Callable[[], Lake]) -> None:
    # given a new order landed twice in one batch: first dated March, then (a later file) corrected to April
    lake = lake_copy()
    base = pl.read_csv(lake.raw / "orders/1992-03/part-0.csv", infer_schema=False).row(0, named=True)
    first = {**base, "o_orderkey": str(NEW_KEY + 7), "o_orderdate": "1992-03-20", "o_totalprice": "10.00"}
    later = {**first, "o_orderdate": "1992-04-02", "o_totalprice": "20.00"}
    pl.DataFrame([first]).write_csv(lake.raw / "orders/1992-03/part-5.csv")
    pl.DataFrame([later]).write_csv(lake.raw / "orders/1992-04/part-5.csv")

    # when one run processes both
    report = lakehouse.run(lake.settings)

    # then silver holds only the later row, in April, and the earlier one is counted as a duplicate
    assert report.ok, report.error
    rows = _silver_orders(lake, NEW_KEY + 7)
    assert rows.select("o_totalprice", "order_month").to_dicts() == [
        {"o_totalprice": 20.0, "order_month": dt.date(1992, 4, 1)}
    ]
    s = report.result("silver.orders")
    assert (s.rows_in, s.rows_written, s.rows_duplicate) == (2, 1, 1)


def test_gold_after_incremental_corrections_equals_a_full_rebuild(lake_copy: Callable[[], Lake]) -> None:
    # given a processed lake, and corrections of a line item (its discount) and of an order in another month
    lake = lake_copy()
    line = pl.read_csv(lake.raw / "lineitem/1992-03/part-0.csv", infer_schema=False).row(0, named=True)
    order = pl.read_csv(lake.raw / "orders/1992-06/part-0.csv", infer_schema=False).row(0, named=True)
    new_discount = "0.10" if line["l_discount"] != "0.10" else "0.09"
    pl.DataFrame([{**line, "l_discount": new_discount}]).write_csv(lake.raw / "lineitem/1992-03/part-1.csv")
    pl.DataFrame([{**order, "o_totalprice": "1.00"}]).write_csv(lake.raw / "orders/1992-06/part-1.csv")
    revenue_before = pl.read_delta(str(lake.root / "gold/revenue_by_nation_month"))

    # when the incremental run processes them
    report = lakehouse.run(lake.settings)
    assert report.ok, report.error
    gold = {name: pl.read_delta(str(lake.root / "gold" / name)).sort(keys) for name, keys in SORT.items()}

    # then the revenue moved by exactly the corrected line's difference
    price = float(line["l_extendedprice"])
    delta = price * (1 - float(new_discount)) - price * (1 - float(line["l_discount"]))
    total_before = revenue_before.get_column("revenue").sum()
    assert gold["revenue_by_nation_month"].get_column("revenue").sum() == pytest.approx(total_before + delta)
    rebuilt = report.result("gold.revenue_by_nation_month").partitions
    assert 0 < rebuilt < revenue_before.get_column("order_month").n_unique()

    # and a full rebuild from bronze gives the same gold tables
    assert lakehouse.run(lake.settings, full_refresh=True).ok
    for name, incremental in gold.items():
        rebuilt_from_bronze = pl.read_delta(str(lake.root / "gold" / name)).sort(SORT[name])
        assert_frame_equal(rebuilt_from_bronze, incremental, rel_tol=1e-9, abs_tol=1e-6)


def test_a_key_landed_100000_times_in_one_batch_keeps_its_latest_and_counts_the_rest(
    lake_copy: Callable[[], Lake]
) -> None:
    # given: one new order landed 100,000 times in one file (a feed replaying its changes), then twice more later
    lake = lake_copy()
    base = pl.read_csv(lake.raw / "orders/1992-03/part-0.csv", infer_schema=False).row(0, named=True)
    versions = pl.DataFrame({**{k: [v] * 100_000 for k, v in base.items()},
                             "o_orderkey": [str(NEW_KEY + 9)] * 100_000,
                             "o_comment": [f"version {i}" for i in range(100_000)]})
    versions.write_csv(lake.raw / "orders/1992-03/part-6.csv")
    pl.DataFrame([{**base, "o_orderkey": str(NEW_KEY + 9), "o_comment": f"late version {i}"} for i in range(2)]
                 ).write_csv(lake.raw / "orders/1992-03/part-7.csv")

    # when one run processes them
    report = lakehouse.run(lake.settings)

    # then silver holds the last landed version, and every other row is counted as a duplicate
    assert report.ok, report.error
    assert _silver_orders(lake, NEW_KEY + 9).get_column("o_comment").to_list() == ["late version 1"]
    s = report.result("silver.orders")
    assert (s.rows_in, s.rows_written, s.rows_quarantined, s.rows_duplicate) == (100_002, 1, 0, 100_001)

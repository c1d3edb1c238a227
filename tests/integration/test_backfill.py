"""Late data, backfills and watermarks: an old month's late rows update exactly the partitions they touch, and a
backfill of a month range rebuilds those months from bronze to what a clean run gives."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

import lakehouse
from lakehouse import ConfigError, silver
from lakehouse.storage import Storage
from lakehouse.table import commit, snapshot, txn_version
from tests.conftest import Lake
from tests.harness import assert_same_lake, contents, versions
from tests.oracle import SORT, assert_frames_match, expected

pytestmark = pytest.mark.integration

GOLD = ("revenue_by_nation_month", "customer_lifetime_value", "pricing_summary_monthly")


def _files_by_partition(root: Path, name: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    dt = DeltaTable(str(root / name))
    column = dt.metadata().partition_columns[0]
    for action in pa.table(dt.get_add_actions(flatten=True)).to_pylist():
        found.setdefault(str(action[f"partition.{column}"]), set()).add(action["path"])
    return found


def _changed(before: dict[str, set[str]], after: dict[str, set[str]]) -> set[str]:
    return {m for m in set(before) | set(after) if before.get(m) != after.get(m)}


def _land_late(lake: Lake, month: str) -> None:
    """Land two new orders of ``month`` (keys 9100001-2), each with two lines shipped in the same month."""
    day = month[:8] + "15"
    ship = {1: month[:8] + "20", 2: month[:8] + "28"}
    (lake.raw / "orders/late").mkdir()
    (lake.raw / "orders/late/drop.csv").write_text(
        "o_orderkey,o_custkey,o_orderstatus,o_totalprice,o_orderdate,o_orderpriority,o_clerk,o_shippriority,o_comment\n"
        f"9100001,1,O,1000.00,{day},1-URGENT,Clerk#000000001,0,late\n"
        f"9100002,2,O,2000.00,{day},2-HIGH,Clerk#000000002,0,late\n"
    )
    (lake.raw / "lineitem/late").mkdir()
    header = ("l_orderkey,l_partkey,l_suppkey,l_linenumber,l_quantity,l_extendedprice,l_discount,l_tax,"
              "l_returnflag,l_linestatus,l_shipdate,l_commitdate,l_receiptdate,l_shipinstruct,l_shipmode,l_comment\n")
    rows = [f"{k},1,1,{n},{n}.00,{100 * n}.00,0.05,0.01,N,O,{ship[n]},{ship[n]},{ship[n]},NONE,AIR,late\n"
            for k in (9100001, 9100002) for n in (1, 2)]
    (lake.raw / "lineitem/late/drop.csv").write_text(header + "".join(rows))


def test_late_rows_for_an_old_month_update_exactly_the_partitions_they_touch(
    tpch_lake: Lake, lake_copy: Callable[[], Lake]
) -> None:
    # given a processed lake, and a late drop of new orders from three months before the newest, with their lines
    lake = lake_copy()
    months = sorted(_files_by_partition(lake.root, "silver/orders"))
    late_month = months[-4]
    _land_late(lake, late_month)
    before = {t: _files_by_partition(lake.root, t) for t in
              ("silver/orders", "silver/lineitem", "gold/revenue_by_nation_month", "gold/pricing_summary_monthly")}

    # when the pipeline runs
    report = lakehouse.run(lake.settings)

    # then exactly the late month's partitions were rewritten, in silver and in gold
    assert report.ok, report.error
    after = {t: _files_by_partition(lake.root, t) for t in before}
    assert _changed(before["silver/orders"], after["silver/orders"]) == {late_month}
    assert _changed(before["silver/lineitem"], after["silver/lineitem"]) == {late_month}
    assert _changed(before["gold/pricing_summary_monthly"], after["gold/pricing_summary_monthly"]) == {late_month}
    # revenue is by order month: it recomputes the order months of every line in the changed ship month (orders
    # ship within months), so later months keep their files, and only the late month's figures change
    revenue = _changed(before["gold/revenue_by_nation_month"], after["gold/revenue_by_nation_month"])
    assert late_month in revenue and max(revenue) == late_month
    now = pl.read_delta(str(lake.root / "gold/revenue_by_nation_month"))
    was = pl.read_delta(str(tpch_lake.root / "gold/revenue_by_nation_month"))
    both = now.join(was, on=["order_month", "nation"], how="full", suffix="_was", coalesce=True)
    differ = both.filter(
        pl.col("revenue_was").is_null() | pl.col("revenue").is_null()
        | ((pl.col("revenue") - pl.col("revenue_was")).abs() > 1e-6 * pl.col("revenue_was").abs())
        | (pl.col("order_count") != pl.col("order_count_was"))
        | (pl.col("lineitem_count") != pl.col("lineitem_count_was"))
    )
    assert {d.isoformat() for d in differ.get_column("order_month").to_list()} == {late_month}
    assert report.result("silver.orders").rows_written == 2
    assert report.result("silver.lineitem").rows_written == 4
    # and gold equals the from-scratch answer over every landed file
    for name in GOLD:
        assert_frames_match(pl.read_delta(str(lake.root / "gold" / name)), expected(lake.raw, name), SORT[name])


def test_backfill_in_batches_rebuilds_the_range_to_a_clean_runs_tables(tpch_lake: Lake,
                                                                      lake_copy: Callable[[], Lake]) -> None:
    # given a processed lake whose silver lost a month's rows (say, a bad transform), so gold is wrong too
    lake = lake_copy()
    storage = Storage(str(lake.root))
    ref = silver.ref("orders")
    base = snapshot(storage, ref)
    month = sorted({f.partition_values["order_month"] for f in base.files})[2]
    lost = [f for f in base.files if f.partition_values["order_month"] == month]
    commit(storage, base, schema=base.schema, adds=[], removes=lost)
    lake_versions = versions(lake.root)
    mark = txn_version(storage, ref, silver.app_id("orders"))
    first, last = month[:7], sorted({f.partition_values["order_month"] for f in base.files})[3][:7]
    outside = {m: fs for m, fs in _files_by_partition(lake.root, "silver/lineitem").items()
               if not first <= m[:7] <= last}

    # when that month and the next are backfilled, one month per batch
    report = lakehouse.backfill(lake.settings, first, last, batch_months=1)

    # then every table equals the clean run's, with one new version per batch for each month-partitioned table
    assert report.ok, report.error
    assert_same_lake(contents(lake.root), contents(tpch_lake.root))
    now = versions(lake.root)
    for name in ("silver.orders", "silver.lineitem", *(f"gold.{g}" for g in GOLD)):
        assert now[name] == lake_versions[name] + 2, name
    for name in ("bronze.orders", "silver.customer", "silver.nation"):
        assert now[name] == lake_versions[name], name
    # and months outside the range kept their very files, the watermark did not move, each commit says its months
    lines = _files_by_partition(lake.root, "silver/lineitem")
    assert all(lines[m] == fs for m, fs in outside.items())
    assert txn_version(storage, ref, silver.app_id("orders")) == mark
    labels = [r.message.split(";")[0] for r in report.results if r.table == "silver.orders"]
    assert labels == [f"backfill {first}..{first}", f"backfill {last}..{last}"]
    # and a normal run afterwards has nothing to do
    rerun = lakehouse.run(lake.settings)
    assert {r.status for r in rerun.results} == {"skipped"}


def test_backfill_rejects_a_bad_range(tpch_lake: Lake) -> None:
    with pytest.raises(ConfigError, match=re.escape("ends (1995-01) before it starts (1995-03)")):
        lakehouse.backfill(tpch_lake.settings, "1995-03", "1995-01")
    with pytest.raises(ConfigError, match="YYYY-MM"):
        lakehouse.backfill(tpch_lake.settings, "1995", "1995-13")


def test_rows_older_than_the_lookback_wait_in_quarantine_until_a_backfill(lake_copy: Callable[[], Lake]) -> None:
    # given a lake whose late data may update only the last two months before the newest, and a drop three back
    lake = lake_copy()
    # (lines ship up to 4 months after their order: lineitem's window has to cover that)
    settings = dataclasses.replace(lake.settings, lookback={"orders": 2, "lineitem": 5})
    months = sorted(_files_by_partition(lake.root, "silver/orders"))
    _land_late(lake, months[-4])
    gold_before = contents(lake.root)

    # when the pipeline runs
    report = lakehouse.run(settings)

    # then the late rows are in quarantine, saying why, and no silver or gold row changed
    assert report.ok, report.error
    assert report.result("silver.orders").rows_quarantined == 2
    assert report.result("silver.lineitem").rows_quarantined == 4
    held = pl.read_delta(str(lake.root / "quarantine/orders")).filter(pl.col("check").str.starts_with("late"))
    assert held.get_column("check").unique().to_list() == [f"late_arrival(before {months[-3][:7]})"]
    assert sorted(held.get_column("value").to_list()) == [months[-4][:8] + "15"] * 2
    now = contents(lake.root)
    for name in ("silver.orders", "silver.lineitem", *(f"gold.{g}" for g in GOLD)):
        assert_same_lake({name: now[name]}, {name: gold_before[name]})

    # when that month is backfilled, the late rows are taken in (and leave quarantine), and gold is the answer over
    # every landed file
    assert lakehouse.backfill(settings, months[-4][:7], months[-4][:7]).ok
    orders = pl.read_delta(str(lake.root / "silver/orders"))
    assert orders.filter(pl.col("o_orderkey") >= 9100001).height == 2
    for name in ("orders", "lineitem"):
        held = pl.read_delta(str(lake.root / "quarantine" / name))
        assert held.filter(pl.col("check").str.starts_with("late")).height == 0, name
    for name in GOLD:
        assert_frames_match(pl.read_delta(str(lake.root / "gold" / name)), expected(lake.raw, name), SORT[name])


def test_a_normal_drop_is_not_late_under_a_lookback_that_covers_the_tables_spread(
    tpch_raw: Path, tpch_lake: Lake, tmp_path: Path
) -> None:
    # given the first five months processed with lookback windows, then the next three months landed
    root = tmp_path / "lake"
    months = sorted(p.name for p in (tpch_raw / "orders").iterdir())
    for source in ("region", "nation", "customer"):
        shutil.copytree(tpch_raw / source, root / "raw" / source)
    settings = dataclasses.replace(tpch_lake.settings.with_root(str(root)),
                                   lookback={"orders": 1, "lineitem": 5})
    for batch in (months[:5], months[5:]):
        for source in ("orders", "lineitem"):
            for month in batch:
                shutil.copytree(tpch_raw / source / month, root / "raw" / source / month)
        assert lakehouse.run(settings).ok

    # then nothing was held back as late, and the tables are those of one run over everything
    assert not (root / "quarantine").exists() or not list((root / "quarantine").iterdir())
    assert_same_lake(contents(root), contents(tpch_lake.root))


def test_a_held_correction_that_moves_a_key_into_a_backfilled_month_leaves_its_old_month(
    lake_copy: Callable[[], Lake], tmp_path: Path
) -> None:
    # given an order of the first month, corrected late to a date in a month the lookback has closed
    lake = lake_copy()
    settings = dataclasses.replace(lake.settings, lookback={"orders": 2})
    months = sorted(_files_by_partition(lake.root, "silver/orders"))
    orders = pl.read_delta(str(lake.root / "silver/orders"))
    key = orders.filter(pl.col("order_month") == dt.date.fromisoformat(months[0])).get_column("o_orderkey").min()
    row = orders.filter(pl.col("o_orderkey") == key).row(0, named=True)
    late_day = months[-4][:8] + "15"
    (lake.raw / "orders/late").mkdir()
    (lake.raw / "orders/late/fix.csv").write_text(
        "o_orderkey,o_custkey,o_orderstatus,o_totalprice,o_orderdate,o_orderpriority,o_clerk,o_shippriority,o_comment\n"
        f"{key},{row['o_custkey']},O,12345.67,{late_day},1-URGENT,Clerk#000000001,0,corrected late\n"
    )
    assert lakehouse.run(settings).ok
    assert pl.read_delta(str(lake.root / "silver/orders")).filter(pl.col("o_orderkey") == key).height == 1

    # when the correction's month is backfilled
    report = lakehouse.backfill(settings, months[-4][:7], months[-4][:7])

    # then the key is only in its new month, with the corrected values, and silver and gold equal a full refresh's
    assert report.ok, report.error
    now = pl.read_delta(str(lake.root / "silver/orders")).filter(pl.col("o_orderkey") == key)
    assert now.select("order_month", "o_totalprice").rows() == [(dt.date.fromisoformat(months[-4]), 12345.67)]
    refreshed = tmp_path / "refreshed"
    shutil.copytree(lake.root, refreshed)
    assert lakehouse.run(settings.with_root(str(refreshed)), full_refresh=True).ok
    wanted = {k: v for k, v in contents(refreshed).items() if k.startswith(("silver.", "gold."))}
    assert_same_lake({k: v for k, v in contents(lake.root).items() if k.startswith(("silver.", "gold."))}, wanted)

"""Schema drift at ingest: a new column in a landed file fails the run naming the file and the column (the default),
or, with the source's policy ``evolve``, is added to bronze and silver, null for the rows landed before it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import polars as pl
import pytest
from deltalake import DeltaTable

import lakehouse
from lakehouse import SchemaMismatch
from tests.conftest import Lake
from tests.harness import assert_same_lake, contents, versions

pytestmark = pytest.mark.integration

COLUMNS = "o_orderkey,o_custkey,o_orderstatus,o_totalprice,o_orderdate,o_orderpriority,o_clerk,o_shippriority,o_comment"
WITH_CHANNEL = (
    f"{COLUMNS},o_channel\n"
    "9300001,1,O,100.50,1992-02-10,1-URGENT,Clerk#000000001,0,new shape,web\n"
    "9300002,2,O,200.25,1992-03-11,2-HIGH,Clerk#000000002,0,new shape,\n"
)


def test_a_new_column_fails_the_run_by_default_naming_file_and_column(lake_copy: Callable[[], Lake]) -> None:
    lake = lake_copy()
    (lake.raw / "orders/drift").mkdir()
    (lake.raw / "orders/drift/part-0.csv").write_text(WITH_CHANNEL)
    before = versions(lake.root)

    report = lakehouse.run(lake.settings)

    assert isinstance(report.error, SchemaMismatch)
    assert str(report.error) == "bronze.orders (raw/orders/drift/part-0.csv): unexpected column 'o_channel'"
    assert report.error.column == "o_channel"
    assert versions(lake.root) == before


def test_with_evolve_a_new_column_reaches_bronze_and_silver_and_old_rows_read_null(
    tpch_lake: Lake, lake_copy: Callable[[], Lake]
) -> None:
    # given a processed lake whose orders source evolves, and a drop with a new column
    lake = lake_copy()
    settings = dataclasses.replace(lake.settings, new_columns={"orders": "evolve"})
    (lake.raw / "orders/drift").mkdir()
    (lake.raw / "orders/drift/part-0.csv").write_text(WITH_CHANNEL)

    # when the pipeline runs
    report = lakehouse.run(settings)

    # then the column is in bronze and silver, with its values for the new rows and null for every earlier one
    assert report.ok, report.error
    assert "added column(s) o_channel" in report.result("bronze.orders").message
    for layer in ("bronze", "silver"):
        table = pl.read_delta(str(lake.root / layer / "orders"))
        assert "o_channel" in table.columns, layer
        new = table.filter(pl.col("o_orderkey").cast(pl.Int64) >= 9300001).sort("o_orderkey")
        assert new.get_column("o_channel").to_list() == ["web", ""], layer
        assert table.filter(pl.col("o_orderkey").cast(pl.Int64) < 9300001).get_column("o_channel").null_count() \
            == table.height - 2, layer
    # a column was added in its own version just before the data: one schema change, then one data commit
    history = [h["operation"] for h in DeltaTable(str(lake.root / "silver/orders")).history(2)]
    assert history == ["WRITE", "ADD COLUMN"]
    # lineitem and gold are what they were, apart from the new orders' effect on gold
    was, now = contents(tpch_lake.root), contents(lake.root)
    assert_same_lake({"silver.lineitem": now["silver.lineitem"]}, {"silver.lineitem": was["silver.lineitem"]})

    # and a full refresh, even by a run that does not say evolve, rebuilds silver with the column from bronze, the
    # same as the incremental run (a column once added is kept)
    incremental = pl.read_delta(str(lake.root / "silver/orders")).drop("_ingested_at").sort("o_orderkey")
    assert lakehouse.run(lake.settings, full_refresh=True).ok
    refreshed = pl.read_delta(str(lake.root / "silver/orders")).drop("_ingested_at").sort("o_orderkey")
    assert refreshed.select(incremental.columns).equals(incremental)


def test_with_evolve_a_file_missing_a_column_still_fails(lake_copy: Callable[[], Lake]) -> None:
    lake = lake_copy()
    settings = dataclasses.replace(lake.settings, new_columns={"orders": "evolve"})
    (lake.raw / "orders/drift").mkdir()
    (lake.raw / "orders/drift/part-0.csv").write_text(
        COLUMNS.replace(",o_comment", "") + "\n9300003,1,O,1.00,1992-02-10,1-URGENT,Clerk#000000001,0\n"
    )

    report = lakehouse.run(settings)

    assert isinstance(report.error, SchemaMismatch)
    assert str(report.error) == "bronze.orders (raw/orders/drift/part-0.csv): missing column 'o_comment'"


def test_with_evolve_a_column_no_model_needs_may_be_missing_later(lake_copy: Callable[[], Lake]) -> None:
    # given a lake where orders gained a column, then a file in the old shape lands
    lake = lake_copy()
    settings = dataclasses.replace(lake.settings, new_columns={"orders": "evolve"})
    (lake.raw / "orders/drift").mkdir()
    (lake.raw / "orders/drift/part-0.csv").write_text(WITH_CHANNEL)
    assert lakehouse.run(settings).ok
    (lake.raw / "orders/drift/part-1.csv").write_text(
        f"{COLUMNS}\n9300004,3,O,5.00,1992-04-01,1-URGENT,Clerk#000000001,0,old shape\n"
    )

    # when the pipeline runs, the old-shape row goes through with the new column null
    report = lakehouse.run(settings)

    assert report.ok, report.error
    silver = pl.read_delta(str(lake.root / "silver/orders")).filter(pl.col("o_orderkey") == 9300004)
    assert silver.select("o_comment", "o_channel").rows() == [("old shape", None)]


def test_with_evolve_a_new_column_may_not_take_an_engine_name(lake_copy: Callable[[], Lake]) -> None:
    lake = lake_copy()
    settings = dataclasses.replace(lake.settings, new_columns={"orders": "evolve"})
    (lake.raw / "orders/drift").mkdir()
    (lake.raw / "orders/drift/part-0.csv").write_text(
        f"{COLUMNS},_run_id\n9300005,1,O,1.00,1992-02-10,1-URGENT,Clerk#000000001,0,x,mine\n"
    )
    before = versions(lake.root)

    report = lakehouse.run(settings)

    assert isinstance(report.error, SchemaMismatch)
    assert str(report.error) == ("bronze.orders (raw/orders/drift/part-0.csv): new column '_run_id' cannot be "
                                 "added: names starting with '_' are the engine's")
    assert versions(lake.root) == before

"""A full run over landed TPC-H: every table committed once, gold equal to the DuckDB oracle, counts that add up,
readable by every reader; a rerun with nothing new changes nothing; a full refresh rebuilds to the same contents."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from polars.testing import assert_frame_equal

import lakehouse
from lakehouse.ops.query import query
from lakehouse.storage import Storage
from tests.conftest import Lake
from tests.oracle import SORT, assert_frames_match, expected

pytestmark = pytest.mark.integration

SOURCES = ("region", "nation", "customer", "orders", "lineitem")
GOLD = ("revenue_by_nation_month", "customer_lifetime_value", "pricing_summary_monthly")
TABLES = [f"bronze.{s}" for s in SOURCES] + [f"silver.{s}" for s in SOURCES] + [f"gold.{g}" for g in GOLD]
# No change events are landed here: their stages run and find nothing (see test_cdc.py).
CDC = ["bronze.customer_cdc", "silver.customer_history"]
STAGES = [*TABLES[:5], CDC[0], *TABLES[5:10], CDC[1], *TABLES[10:]]
SILVER_KEYS = {
    "region": ["r_regionkey"], "nation": ["n_nationkey"], "customer": ["c_custkey"], "orders": ["o_orderkey"],
    "lineitem": ["l_orderkey", "l_linenumber"],
}


def _path(root: Path, table: str) -> str:
    return str(root / table.replace(".", "/"))


def versions(root: Path) -> dict[str, int]:
    """Version of every Delta table under the data layers of ``root``."""
    found = {}
    for layer in ("bronze", "silver", "gold", "quarantine"):
        for d in sorted((root / layer).glob("*")):
            if (d / "_delta_log").is_dir():
                found[f"{layer}.{d.name}"] = DeltaTable(str(d)).version()
    return found


def read(root: Path, table: str) -> pl.DataFrame:
    df = pl.read_delta(_path(root, table))
    layer, name = table.split(".")
    keys = SILVER_KEYS.get(name) if layer in ("silver", "bronze") else SORT[name]
    return df.sort(keys or df.columns)


def raw_rows(raw: Path, source: str) -> int:
    return sum(pl.read_csv(p, infer_schema=False).height for p in (raw / source).rglob("*.csv"))


# --- a) a full run ---------------------------------------------------------------------------------------------


def test_every_table_is_committed_once_at_version_zero(tpch_lake: Lake) -> None:
    report = tpch_lake.report
    assert report.ok
    assert [r.table for r in report.results] == STAGES
    assert {r.table: (r.status, r.version) for r in report.results} == {t: ("committed", 0) for t in TABLES} | {
        t: ("skipped", None) for t in CDC}
    assert {t: v for t, v in versions(tpch_lake.root).items()} == {t: 0 for t in TABLES}


@pytest.mark.parametrize("name", GOLD)
def test_gold_equals_the_oracle(tpch_lake: Lake, name: str) -> None:
    actual = pl.read_delta(_path(tpch_lake.root, f"gold.{name}"))
    assert_frames_match(actual, expected(tpch_lake.raw, name), SORT[name])


def test_counts_add_up_and_match_the_tables(tpch_lake: Lake) -> None:
    report, root = tpch_lake.report, tpch_lake.root
    for source in SOURCES:
        b, s = report.result(f"bronze.{source}"), report.result(f"silver.{source}")
        # every landed data line is in bronze, every bronze row is in silver (TPC-H has no bad or duplicate rows)
        assert b.rows_in == raw_rows(tpch_lake.raw, source) > 0
        assert b.rows_in == b.rows_written + b.rows_quarantined
        assert s.rows_in == s.rows_written + s.rows_quarantined + s.rows_duplicate
        assert s.rows_in == b.rows_written
        assert (b.rows_quarantined, s.rows_quarantined, s.rows_duplicate) == (0, 0, 0)
        assert DeltaTable(_path(root, b.table)).to_pyarrow_table().num_rows == b.rows_written
        assert DeltaTable(_path(root, s.table)).to_pyarrow_table().num_rows == s.rows_written
        assert b.files_in == len(list((tpch_lake.raw / source).rglob("*.csv")))
    for name in GOLD:
        g = report.result(f"gold.{name}")
        assert DeltaTable(_path(root, g.table)).to_pyarrow_table().num_rows == g.rows_written > 0
    assert not (root / "quarantine").exists()


def test_run_record_holds_one_row_per_table_with_the_counts(tpch_lake: Lake) -> None:
    report = tpch_lake.report
    rows = query(
        Storage(str(tpch_lake.root)),
        "SELECT table_name, status, rows_in, rows_written, rows_quarantined, rows_duplicate, version, pipeline, "
        f"full_refresh FROM _meta.runs WHERE run_id = '{report.run_id}' ORDER BY table_name",
    ).to_pylist()
    wanted = sorted(
        (
            {"table_name": r.table, "status": r.status, "rows_in": r.rows_in, "rows_written": r.rows_written,
             "rows_quarantined": r.rows_quarantined, "rows_duplicate": r.rows_duplicate, "version": r.version,
             "pipeline": "tpch", "full_refresh": False}
            for r in report.results
        ),
        key=lambda r: r["table_name"],
    )
    assert rows == wanted


# --- f) readers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "partition"), [("gold.revenue_by_nation_month", "order_month"), ("silver.orders", "order_month")]
)
def test_readers_agree(tpch_lake: Lake, table: str, partition: str) -> None:
    # given a partitioned table written by the engine
    path = _path(tpch_lake.root, table)
    dt = DeltaTable(path)

    # when polars, DuckDB (through the engine's query, and through a registered dataset) and delta-rs read it
    by_polars = pl.read_delta(path)
    by_query = query(Storage(str(tpch_lake.root)), f"SELECT * FROM {table}")
    con = duckdb.connect()
    con.register("t", dt.to_pyarrow_dataset())
    by_duckdb = con.sql("SELECT * FROM t").arrow().read_all()
    by_deltars = dt.to_pyarrow_table()

    # then they see the same rows, and the partition column is a date everywhere
    n = tpch_lake.report.result(table).rows_written
    assert by_polars.height == by_query.num_rows == by_duckdb.num_rows == by_deltars.num_rows == n
    assert by_polars.schema[partition] == pl.Date
    for t in (by_query, by_duckdb, by_deltars):
        assert t.schema.field(partition).type == pa.date32()
    partitions = set(pa.table(dt.get_add_actions(flatten=True)).column(f"partition.{partition}").to_pylist())
    assert con.execute(f"SELECT count(DISTINCT {partition}) FROM t").fetchall() == [(len(partitions),)]
    polars_sorted = by_polars.sort(by_polars.columns)
    # DuckDB names the UTC zone "Etc/UTC": same instants, so compare in the polars types
    duckdb_frame = pl.from_arrow(by_duckdb)
    assert isinstance(duckdb_frame, pl.DataFrame)
    duckdb_sorted = duckdb_frame.select(by_polars.columns).cast(by_polars.schema).sort(by_polars.columns)
    assert_frame_equal(polars_sorted, duckdb_sorted)


# --- b) a rerun with nothing new ----------------------------------------------------------------------------------


def test_rerun_without_new_data_changes_nothing(lake_copy: Callable[[], Lake]) -> None:
    # given a processed lake
    lake = lake_copy()
    before = versions(lake.root)
    contents = {t: read(lake.root, t) for t in TABLES if not t.startswith("bronze")}

    # when the pipeline runs again with nothing newly landed
    report = lakehouse.run(lake.settings)

    # then every stage is skipped and no table gets a new version or different contents
    assert report.ok
    assert {r.table: r.status for r in report.results} == {t: "skipped" for t in STAGES}
    # each names the version it found the table at, and the input versions it checked
    assert all(r.version == before.get(r.table) and r.rows_written == 0 for r in report.results)
    assert {r.table: r.inputs for r in report.results}["gold.pricing_summary_monthly"] == {
        "silver.lineitem": before["silver.lineitem"]}
    assert versions(lake.root) == before
    for t, df in contents.items():
        assert_frame_equal(read(lake.root, t), df)
    runs = query(Storage(str(lake.root)), f"SELECT status FROM _meta.runs WHERE run_id = '{report.run_id}'")
    assert runs.column("status").to_pylist() == ["skipped"] * len(STAGES)


# --- g) full refresh ------------------------------------------------------------------------------------------------


def test_full_refresh_rebuilds_silver_and_gold_in_one_version_each_to_the_same_contents(
    lake_copy: Callable[[], Lake],
) -> None:
    # given a processed lake
    lake = lake_copy()
    before = versions(lake.root)
    contents = {t: read(lake.root, t) for t in TABLES}

    # when it is rebuilt from bronze
    report = lakehouse.run(lake.settings, full_refresh=True)

    # then bronze is untouched, silver and gold get exactly one new version each, and nothing changes in content
    assert report.ok
    after = versions(lake.root)
    for t in TABLES:
        if t.startswith("bronze"):
            assert (report.result(t).status, after[t]) == ("skipped", before[t])
        else:
            assert (report.result(t).status, after[t]) == ("committed", before[t] + 1)
            assert report.result(t).version == after[t]
    for t, df in contents.items():
        assert_frame_equal(read(lake.root, t), df, rel_tol=1e-9, abs_tol=1e-6)
    for s in SOURCES:
        r = report.result(f"silver.{s}")
        assert r.rows_in == r.rows_written == contents[f"silver.{s}"].height
    # every file of the previous version was replaced
    dt = DeltaTable(_path(lake.root, "silver.orders"))
    old = set(DeltaTable(_path(lake.root, "silver.orders"), version=before["silver.orders"]).file_uris())
    assert not old & set(dt.file_uris())
    sql = f"SELECT DISTINCT full_refresh FROM _meta.runs WHERE run_id = '{report.run_id}'"
    flags = query(Storage(str(lake.root)), sql)
    assert flags.column("full_refresh").to_pylist() == [True]

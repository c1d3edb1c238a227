"""Incremental runs: landing the remaining months later gives the same tables as processing everything at once,
and silver rewrites only the partitions the new data touches."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from polars.testing import assert_frame_equal

import lakehouse
from lakehouse.settings import Settings
from tests.conftest import RAY, Lake
from tests.oracle import SORT, assert_frames_match, expected

pytestmark = pytest.mark.integration

FIRST_MONTHS = 5
GOLD = ("revenue_by_nation_month", "customer_lifetime_value", "pricing_summary_monthly")
LINEAGE = ["_ingested_at", "_source_file", "_source_line"]


def _land(raw: Path, root: Path, months: list[str]) -> int:
    """Copy the given order months of orders and lineitem from ``raw`` into ``root/raw``; returns files copied."""
    n = 0
    for source in ("orders", "lineitem"):
        for month in months:
            shutil.copytree(raw / source / month, root / "raw" / source / month)
            n += len(list((raw / source / month).iterdir()))
    return n


def _files_by_partition(path: str, column: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for action in pa.table(DeltaTable(path).get_add_actions(flatten=True)).to_pylist():
        found.setdefault(str(action[f"partition.{column}"]), set()).add(action["path"])
    return found


def test_landing_the_rest_later_equals_a_run_over_everything(tpch_raw: Path, tpch_lake: Lake, tmp_path: Path) -> None:
    # given the dimensions and the first months of orders and lineitem, processed
    months = sorted(p.name for p in (tpch_raw / "orders").iterdir())
    first, rest = months[:FIRST_MONTHS], months[FIRST_MONTHS:]
    root = tmp_path / "lake"
    for dim in ("region", "nation", "customer"):
        shutil.copytree(tpch_raw / dim, root / "raw" / dim)
    _land(tpch_raw, root, first)
    settings = Settings(root=str(root), ray=RAY)
    assert lakehouse.run(settings).ok
    orders_before = _files_by_partition(str(root / "silver/orders"), "order_month")
    lines_before = _files_by_partition(str(root / "silver/lineitem"), "ship_month")
    silver_versions = {t: DeltaTable(str(root / "silver" / t)).version() for t in ("orders", "lineitem")}

    # when the remaining months land and the pipeline runs again
    landed = _land(tpch_raw, root, rest)
    report = lakehouse.run(settings)

    # then only orders and lineitem were read, each once more, and every count adds up
    assert report.ok, report.error
    for source in ("region", "nation", "customer"):
        assert report.result(f"bronze.{source}").status == "skipped"
        assert report.result(f"silver.{source}").status == "skipped"
    assert report.result("bronze.orders").files_in + report.result("bronze.lineitem").files_in == landed
    for name in ("orders", "lineitem"):
        r = report.result(f"silver.{name}")
        assert (r.status, r.version) == ("committed", silver_versions[name] + 1)
        assert r.rows_in == report.result(f"bronze.{name}").rows_written
        assert r.rows_in == r.rows_written + r.rows_quarantined + r.rows_duplicate

    # and silver rewrote only the partitions the new months touch: the others keep their very files
    new_order_months = {f"{m}-01" for m in rest}
    orders_after = _files_by_partition(str(root / "silver/orders"), "order_month")
    assert set(orders_after) == set(orders_before) | new_order_months
    for month, files in orders_before.items():
        assert orders_after[month] == files, month
    assert report.result("silver.orders").partitions == len(new_order_months)

    new_lines = pl.concat(
        pl.read_csv(p, infer_schema=False) for m in rest for p in (tpch_raw / "lineitem" / m).glob("*.csv")
    )
    touched_ship_months = {f"{d[:7]}-01" for d in new_lines.get_column("l_shipdate").unique().to_list()}
    lines_after = _files_by_partition(str(root / "silver/lineitem"), "ship_month")
    untouched = set(lines_before) - touched_ship_months
    assert untouched, "the test data should leave some ship months untouched"
    for month in untouched:
        assert lines_after[month] == lines_before[month], month
    for month in touched_ship_months & set(lines_before):
        assert not lines_after[month] & lines_before[month], month
    assert report.result("silver.lineitem").partitions == len(touched_ship_months)

    # and silver and gold equal a from-scratch run over all the data
    for name, keys in (("orders", ["o_orderkey"]), ("lineitem", ["l_orderkey", "l_linenumber"])):
        got = pl.read_delta(str(root / "silver" / name)).drop(LINEAGE[0]).sort(keys)
        want = pl.read_delta(str(tpch_lake.root / "silver" / name)).drop(LINEAGE[0]).sort(keys)
        assert_frame_equal(got, want)
    for name in GOLD:
        got = pl.read_delta(str(root / "gold" / name)).sort(SORT[name])
        want = pl.read_delta(str(tpch_lake.root / "gold" / name)).sort(SORT[name])
        assert_frame_equal(got, want, rel_tol=1e-9, abs_tol=1e-6)
        assert_frames_match(got, expected(root / "raw", name), SORT[name])

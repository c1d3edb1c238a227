"""Compaction planning: a partition's small files in groups of up to the target rows, none for a partition with one
small file or only large ones."""

from __future__ import annotations

from lakehouse.ops.maintain import plan, sort_keys
from lakehouse.table import Snapshot, TableFile, TableRef
from tests.debezium import PIPELINE as BANK
from tests.shops import LEDGER

SILVER = TableRef("silver", "t")


def files(*specs: tuple[str, int], ref: TableRef = SILVER) -> Snapshot:
    found = tuple(TableFile(path=f"{day}/f{i}.parquet", size=rows * 10, rows=rows, partition_values={"day": day},
                            added_ms=i) for i, (day, rows) in enumerate(specs))
    return Snapshot(ref, 3, found, partition_by=("day",))


def test_small_files_of_a_partition_are_grouped_up_to_the_target() -> None:
    snap = files(("d1", 300), ("d1", 300), ("d1", 300), ("d1", 300), ("d2", 100), ("d3", 900), ("d3", 200),
                 ("d4", 100), ("d4", 100))

    groups = plan(snap, target_rows=1000)

    assert [[f.path for f in g] for g in groups] == [
        ["d1/f0.parquet", "d1/f1.parquet", "d1/f2.parquet"],  # 900 rows; a fourth would pass the target
        ["d4/f7.parquet", "d4/f8.parquet"]]
    # d1's fourth file is alone in its group, d2 has one file, d3's large file is not small: left as they are


def test_a_bronze_table_s_empty_files_are_not_compacted() -> None:
    # (an empty bronze file is the only record that a landed file of malformed lines only was ingested)
    specs = (("d1", 0), ("d1", 300), ("d1", 300), ("d1", 0))
    assert [[f.path for f in g] for g in plan(files(*specs, ref=TableRef("bronze", "t")), target_rows=1000)] == [
        ["d1/f1.parquet", "d1/f2.parquet"]]
    assert [len(g) for g in plan(files(*specs), target_rows=1000)] == [4]  # elsewhere an empty file is just small


def test_compacted_files_are_sorted_by_each_table_s_keys() -> None:
    lineage = ("_source_file", "_source_line")  # bronze: by landed file and line
    assert sort_keys(LEDGER) == {"bronze.entries": lineage, "silver.entries": ("entry_id",),
                                 "gold.shop_totals": ("shop_id",)}
    assert sort_keys(BANK) == {"bronze.accounts": lineage, "bronze.accounts_cdc": lineage, "silver.accounts": ("id",),
                               "silver.accounts_history": ("id", "_lsn")}

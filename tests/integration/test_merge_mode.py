"""Silver write mode ``merge``: a silver table merged on its keys equals the partition-overwrite result, a
correction rewrites only the files holding its keys, and a batch that changes nothing makes no new version."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

import examples.tpch.pipeline
import lakehouse
from lakehouse import table
from lakehouse.silver import ref
from lakehouse.storage import Storage
from tests.conftest import RAY, Clean, Lake
from tests.harness import assert_same_lake, contents, versions

pytestmark = pytest.mark.integration

LINES = ("l_orderkey,l_partkey,l_suppkey,l_linenumber,l_quantity,l_extendedprice,l_discount,l_tax,l_returnflag,"
         "l_linestatus,l_shipdate,l_commitdate,l_receiptdate,l_shipinstruct,l_shipmode,l_comment\n")


@pytest.fixture
def merge_lineitem(monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = examples.tpch.pipeline.PIPELINE
    silver = tuple(dataclasses.replace(s, write_mode="merge") if s.name == "lineitem" else s for s in pipeline.silver)
    monkeypatch.setattr(examples.tpch.pipeline, "PIPELINE", dataclasses.replace(pipeline, silver=silver))


def _lines(lake: Lake) -> pl.DataFrame:
    df = pl.read_delta(str(lake.root / "silver/lineitem"))
    return df.drop("_ingested_at").sort("l_orderkey", "l_linenumber")


def test_a_correction_rewrites_only_the_files_of_its_keys_and_a_repeat_makes_no_version(
    lake_copy: Callable[[], Lake], merge_lineitem: None,
) -> None:
    # given the processed lake (lineitem written by partition overwrite), with lineitem now in merge mode
    lake = lake_copy()
    storage = Storage(str(lake.root))
    before_files = {f.path: f.partition_values for f in table.snapshot(storage, ref("lineitem")).files}
    line = _lines(lake).row(0, named=True)
    values = {**line, "l_quantity": 99}  # only the quantity changes
    correction = LINES + ",".join(str(values[c]) for c in LINES.strip().split(",")) + "\n"
    (lake.raw / "lineitem/fix").mkdir()
    (lake.raw / "lineitem/fix/part-0.csv").write_text(correction)
    expected = _lines(lake).with_columns(
        pl.when((pl.col("l_orderkey") == line["l_orderkey"]) & (pl.col("l_linenumber") == line["l_linenumber"]))
        .then(pl.lit(99.0)).otherwise(pl.col("l_quantity")).alias("l_quantity"))

    # when the pipeline runs
    report = lakehouse.run(lake.settings)

    # then only the file that held the line was replaced, and the table holds the correction and nothing else new
    assert report.ok, report.error
    result = report.result("silver.lineitem")
    assert (result.status, result.rows_in, result.rows_written) == ("committed", 1, 1)
    after_files = {f.path: f.partition_values for f in table.snapshot(storage, ref("lineitem")).files}
    assert len(set(before_files) - set(after_files)) == 1 and len(set(after_files) - set(before_files)) == 1
    got = _lines(lake)
    assert got.select(expected.columns).drop("_source_file", "_source_line").equals(
        expected.drop("_source_file", "_source_line"))

    # and the same correction landed again changes nothing: no new version of silver.lineitem
    (lake.raw / "lineitem/fix/part-1.csv").write_text(correction)
    before = versions(lake.root)
    report = lakehouse.run(lake.settings)
    assert report.ok, report.error
    assert report.result("silver.lineitem").message.startswith("the batch changes nothing")
    assert versions(lake.root)["silver.lineitem"] == before["silver.lineitem"]


def test_merge_mode_gives_the_tables_of_partition_overwrite(landed: Path, clean: Clean, merge_lineitem: None) -> None:
    # given the landed files, processed with lineitem in merge mode
    settings = lakehouse.Settings(root=str(landed), ray=RAY)

    report = lakehouse.run(settings)

    # then every table equals the clean run's (lineitem by partition overwrite)
    assert report.ok, report.error
    assert_same_lake(contents(landed), clean.tables)

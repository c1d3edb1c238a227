"""A landed file whose header lacks a column fails the run with an error naming the file and the column, and
commits nothing to that bronze table."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

import lakehouse
from lakehouse.errors import SchemaMismatch
from lakehouse.settings import Settings
from tests.conftest import RAY, Lake

pytestmark = pytest.mark.integration

BAD_FILE = "raw/orders/1999-02/part-0.csv"


def _land_without_comment(lake: Lake) -> None:
    orders = pl.read_csv(lake.raw / "orders/1992-01/part-0.csv", infer_schema=False).head(3)
    (lake.root / BAD_FILE).parent.mkdir(parents=True)
    orders.drop("o_comment").write_csv(lake.root / BAD_FILE)


def test_a_file_missing_a_column_commits_nothing(lake_copy: Callable[[], Lake]) -> None:
    # given a processed lake, a new good orders file and a new orders file without o_comment
    lake = lake_copy()
    good = pl.read_csv(lake.raw / "orders/1992-02/part-0.csv", infer_schema=False).head(2)
    good.write_csv(lake.raw / "orders/1992-02/part-9.csv")
    _land_without_comment(lake)
    versions = {t: DeltaTable(str(lake.root / t)).version() for t in ("bronze/orders", "silver/orders")}
    rows = pl.read_delta(str(lake.root / "bronze/orders")).height

    # when the pipeline runs
    report = lakehouse.run(lake.settings)

    # then it fails with a typed error naming the table, the landed file and the column
    error = report.error
    assert isinstance(error, SchemaMismatch)
    assert (error.table, error.path) == ("bronze.orders", BAD_FILE)
    assert str(error) == f"bronze.orders ({BAD_FILE}): missing column 'o_comment'"
    assert "Traceback" not in str(error)
    assert (report.results[-1].table, report.results[-1].status) == ("bronze.orders", "failed")
    assert [r.status for r in report.results[:3]] == ["skipped"] * 3

    # and neither orders table got a new version (not even for the good file)
    assert {t: DeltaTable(str(lake.root / t)).version() for t in versions} == versions
    assert pl.read_delta(str(lake.root / "bronze/orders")).height == rows

    # when the bad file is taken away and the pipeline runs again
    (lake.root / BAD_FILE).unlink()
    report = lakehouse.run(lake.settings)

    # then the good file was still pending: nothing had been marked as ingested
    assert report.ok, report.error
    assert report.result("bronze.orders").files_in == 1
    assert pl.read_delta(str(lake.root / "bronze/orders")).height == rows + 2
    assert DeltaTable(str(lake.root / "bronze/orders")).version() == versions["bronze/orders"] + 1


def _first_landing(tmp_path: Path, lake: Lake, *, second: pl.DataFrame) -> Settings:
    orders = pl.read_csv(lake.raw / "orders/1992-01/part-0.csv", infer_schema=False).head(3)
    for month, df in (("1992-01", orders), ("1992-02", second)):
        (tmp_path / f"raw/orders/{month}").mkdir(parents=True)
        df.write_csv(tmp_path / f"raw/orders/{month}/part-0.csv")
    return Settings(root=str(tmp_path), ray=RAY)


def test_first_ingest_with_disagreeing_headers_names_the_landed_file(
    tmp_path: Path, tpch_lake: Lake, ray_session: None
) -> None:
    # given a fresh root whose two orders files disagree on the columns
    orders = pl.read_csv(tpch_lake.raw / "orders/1992-02/part-0.csv", infer_schema=False).head(3)
    settings = _first_landing(tmp_path, tpch_lake, second=orders.drop("o_comment"))

    # when bronze ingests them
    with pytest.raises(SchemaMismatch) as info:
        lakehouse.ingest(lakehouse.RunContext.start(settings), "orders")

    # then the error names a landed file and the column, and no table was created
    assert not (tmp_path / "bronze/orders/_delta_log").exists()
    assert "o_comment" in str(info.value)
    assert info.value.path in ("raw/orders/1992-01/part-0.csv", "raw/orders/1992-02/part-0.csv")


def test_first_ingest_with_disagreeing_headers_commits_nothing(
    tmp_path: Path, tpch_lake: Lake, ray_session: None
) -> None:
    orders = pl.read_csv(tpch_lake.raw / "orders/1992-02/part-0.csv", infer_schema=False).head(3)
    settings = _first_landing(tmp_path, tpch_lake, second=orders.drop("o_comment"))

    with pytest.raises(SchemaMismatch, match="o_comment"):
        lakehouse.ingest(lakehouse.RunContext.start(settings), "orders")

    assert not (tmp_path / "bronze/orders/_delta_log").exists()


def test_first_ingest_accepts_the_same_columns_in_another_order(
    tmp_path: Path, tpch_lake: Lake, ray_session: None
) -> None:
    orders = pl.read_csv(tpch_lake.raw / "orders/1992-02/part-0.csv", infer_schema=False).head(3)
    settings = _first_landing(tmp_path, tpch_lake, second=orders.select(reversed(orders.columns)))

    result = lakehouse.ingest(lakehouse.RunContext.start(settings), "orders")

    assert (result.status, result.rows_written) == ("committed", 6)

"""Gold built with a tiny broadcast bound (many batches of months) equals the oracle: batching changes no result."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest

from lakehouse import Settings, run
from lakehouse.gold.stage import partition_batches
from lakehouse.table import TableFile
from tests.oracle import SORT, assert_frames_match, expected

pytestmark = pytest.mark.integration


def test_month_batches_keep_months_whole_and_respect_the_bound() -> None:
    def f(month: str, rows: int) -> TableFile:
        return TableFile(path=f"{month}-{rows}", size=1, rows=rows, partition_values={"order_month": month})

    files = [f("1995-01-01", 60), f("1995-01-01", 50), f("1995-02-01", 30), f("1995-03-01", 500), f("1995-04-01", 10)]
    batches = partition_batches(files, "order_month", max_rows=100)
    months = [{f.partition_values["order_month"] for f in b} for b in batches]
    assert months == [{"1995-01-01"}, {"1995-02-01"}, {"1995-03-01"}, {"1995-04-01"}]
    assert sum(len(b) for b in batches) == len(files)


def test_gold_with_many_broadcast_batches_equals_the_oracle(
    ray_session: None, tpch_raw: Path, settings: Settings
) -> None:
    # given: landed data and a broadcast bound far below one month of orders
    shutil.copytree(tpch_raw, Path(settings.root) / "raw")
    small = replace(settings, broadcast_max_rows=50)

    # when
    report = run(small)

    # then
    assert report.ok, report.error
    for table, keys in SORT.items():
        actual = pl.read_delta(f"{settings.root}/gold/{table}")
        assert_frames_match(actual, expected(tpch_raw, table), keys)

"""The demo generator lands the same TPC-H rows whether it generates orders and lines whole or in parts."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from lakehouse import demo
from lakehouse.storage import Storage


def landed(root: Path, table: str) -> pl.DataFrame:
    frames = [pl.read_csv(p, infer_schema=False).with_columns(pl.lit(p.parent.name).alias("month"))
              for p in sorted((root / "raw" / table).rglob("*.csv"))]
    return pl.concat(frames).sort(pl.all())


def test_orders_and_lines_generated_in_parts_land_the_same_rows_in_the_same_months(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole, parted = tmp_path / "whole", tmp_path / "parted"
    demo.generate(Storage(str(whole)), scale_factor=0.01)
    monkeypatch.setattr(demo, "MAX_PART_SCALE_FACTOR", 0.004)  # three parts

    result = demo.generate(Storage(str(parted)), scale_factor=0.01)

    # three files a month (one per part), and the same rows in each month
    assert len(list((parted / "raw/orders").rglob("*.csv"))) == 3 * len(list((whole / "raw/orders").rglob("*.csv")))
    assert result.written == 3 + 2 * 3 * len(list((whole / "raw/orders").glob("*")))
    for table in ("orders", "lineitem"):
        assert landed(parted, table).equals(landed(whole, table))
    orders = landed(parted, "orders").select(pl.col("o_orderkey").alias("l_orderkey"),
                                             pl.col("o_orderdate").str.slice(0, 7).alias("month"))
    lines = landed(parted, "lineitem")
    assert lines.join(orders, on=["l_orderkey", "month"], how="anti").height == 0  # each line in its order's month

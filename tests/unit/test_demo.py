"""The demo generator lands the same TPC-H rows whether it generates orders and lines whole or in parts."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from examples.tpch import demo
from lakehouse.storage import Storage


def landed_rows(raw: Path, table: str) -> pl.DataFrame:
    frames = [pl.read_csv(p, infer_schema=False).with_columns(pl.lit(p.parent.name).alias("month"))
              for p in sorted((raw / table).rglob("*.csv"))]
    return pl.concat(frames).sort(pl.all())


def test_orders_and_lines_generated_in_parts_land_the_same_rows_in_the_same_months(
    tpch_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given the session's demo data (SF 0.01, 8 months), generated whole
    whole = tpch_raw
    monkeypatch.setattr(demo, "MAX_PART_SCALE_FACTOR", 0.004)  # three parts

    result = demo.generate(Storage(str(tmp_path)), scale_factor=0.01, months=8)

    # then three files a month (one per part), and the same rows in each month
    parted = tmp_path / "raw"
    months = len(list((whole / "orders").glob("*")))
    assert len(list((parted / "orders").rglob("*.csv"))) == 3 * len(list((whole / "orders").rglob("*.csv")))
    assert result.written == len(demo.DIMENSIONS) + 2 * 3 * months
    for table in ("orders", "lineitem"):
        assert landed_rows(parted, table).equals(landed_rows(whole, table))
    orders = landed_rows(parted, "orders").select(pl.col("o_orderkey").alias("l_orderkey"),
                                                  pl.col("o_orderdate").str.slice(0, 7).alias("month"))
    lines = landed_rows(parted, "lineitem")
    assert lines.join(orders, on=["l_orderkey", "month"], how="anti").height == 0  # each line in its order's month

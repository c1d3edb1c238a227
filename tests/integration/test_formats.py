"""NDJSON and Parquet landings end in the same silver rows as the CSV landing of the same data."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import lakehouse
from lakehouse.settings import Settings
from tests.conftest import RAY, Lake

pytestmark = pytest.mark.integration

MONTH = "1992-01"
LINEAGE = ["_source_file", "_source_line", "_ingested_at"]


def _typed(csv: Path) -> pl.DataFrame:
    """The landed CSV with real types (ints, floats, dates), as an upstream system would export it."""
    return pl.read_csv(csv, try_parse_dates=True)


def _land(df: pl.DataFrame, path: Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "ndjson":
        df.write_ndjson(path)
    else:
        df.write_parquet(path)


@pytest.mark.parametrize("fmt", ["ndjson", "parquet"])
def test_json_and_parquet_sources_give_the_same_silver_as_csv(
    fmt: str, tpch_lake: Lake, tmp_path: Path, ray_session: None
) -> None:
    # given nation and one month of orders landed as NDJSON or Parquet in a fresh root
    nation = _typed(tpch_lake.raw / "nation/nation.csv")
    orders = _typed(tpch_lake.raw / f"orders/{MONTH}/part-0.csv")
    assert orders.schema["o_orderdate"] == pl.Date and orders.schema["o_totalprice"] == pl.Float64
    root = tmp_path / "lake"
    _land(nation, root / f"raw/nation/nation.{fmt}", fmt)
    _land(orders, root / f"raw/orders/{MONTH}/part-0.{fmt}", fmt)

    # when bronze and silver are built for them
    ctx = lakehouse.RunContext.start(Settings(root=str(root), ray=RAY))
    results = [lakehouse.ingest(ctx, s) for s in ("nation", "orders")]
    results += [lakehouse.build_silver(ctx, s) for s in ("nation", "orders")]

    # then every row made it, and silver equals the CSV-built silver row for row (lineage aside)
    assert [r.status for r in results] == ["committed"] * 4
    assert [r.rows_quarantined for r in results] == [0] * 4
    for name, keys, want_filter in (
        ("nation", ["n_nationkey"], pl.lit(True)),
        ("orders", ["o_orderkey"], pl.col("order_month") == dt.date(1992, 1, 1)),
    ):
        got = pl.read_delta(str(root / "silver" / name)).drop(LINEAGE).sort(keys)
        want = pl.read_delta(str(tpch_lake.root / "silver" / name)).filter(want_filter).drop(LINEAGE).sort(keys)
        assert got.height == want.height > 0
        assert_frame_equal(got, want)
    lines = pl.read_delta(str(root / "silver/orders")).get_column("_source_line").sort().to_list()
    assert lines == list(range(1, orders.height + 1))
    bronze = pl.read_delta(str(root / "bronze/orders"))
    assert set(bronze.get_column("_source_file").to_list()) == {f"raw/orders/{MONTH}/part-0.{fmt}"}
    assert all(bronze.schema[c] == pl.String for c in orders.columns)

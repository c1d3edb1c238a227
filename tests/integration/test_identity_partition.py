"""Silver partitioned by the value of a column (``identity("city")``): partitions are the column's values, a run
rewrites only the values its new rows hold (a store that moves city leaves its old partition), and a gold table
aligned with those partitions rebuilds exactly the cities that changed."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import polars as pl
import pytest
from deltalake import DeltaTable

import lakehouse
from lakehouse.settings import Settings
from tests.conftest import RAY

pytestmark = pytest.mark.integration

HEADER = "shop_id,city,size_m2\n"


def _settings(root: Path) -> Settings:
    return Settings(root=str(root), ray=RAY, pipeline="tests.shops:STORES")


def _land(root: Path, name: str, rows: str) -> None:
    (root / "raw/stores" / name).mkdir(parents=True)
    (root / "raw/stores" / name / "part-0.csv").write_text(HEADER + rows)


def _oracle(root: Path) -> list[tuple[object, ...]]:
    """Gold from the landed files by DuckDB: the latest landed row of each store, counted per city."""
    files = sorted(str(p) for p in (root / "raw/stores").glob("*/part-0.csv"))
    return duckdb.sql(f"""
        with landed as (select *, filename as f from read_csv({files}, filename = true, header = true)),
             latest as (select * from landed qualify row_number() over (partition by shop_id order by f desc) = 1)
        select city, count(*)::bigint, sum(size_m2)::bigint from latest group by city order by city
    """).fetchall()


def _gold(root: Path) -> list[tuple[object, ...]]:
    df = pl.read_delta(str(root / "gold/city_stores")).sort("city")
    return [tuple(r) for r in df.select("city", "stores", "size_m2").iter_rows()]


def _touched(root: Path, table: str) -> set[str]:
    """The partition values the table's latest commit removed or added files in, from its log."""
    newest = sorted((root / table / "_delta_log").glob("*.json"))[-1]
    actions = [json.loads(line) for line in newest.read_text().splitlines()]
    return {a[kind]["partitionValues"]["city"] for a in actions for kind in ("add", "remove") if kind in a}


def test_a_store_moving_city_rewrites_only_its_old_and_new_cities(ray_session: None, tmp_path: Path) -> None:
    # given stores in three cities, built once
    root = tmp_path / "lake"
    _land(root, "d1", "1,Lyon,100\n2,Lyon,50\n3,Oslo,70\n4,Pune,20\n")
    assert lakehouse.run(_settings(root)).ok
    silver = pl.read_delta(str(root / "silver/stores"))
    assert sorted(silver.get_column("city").unique().to_list()) == ["Lyon", "Oslo", "Pune"]
    assert DeltaTable(str(root / "silver/stores")).metadata().partition_columns == ["city"]
    assert _gold(root) == _oracle(root)

    # when store 2 moves from Lyon to Oslo and grows
    _land(root, "d2", "2,Oslo,60\n")
    report = lakehouse.run(_settings(root))

    # then silver holds it once, in Oslo; both tables rewrote Lyon and Oslo only, Pune untouched
    assert report.ok, report.error
    silver = pl.read_delta(str(root / "silver/stores")).sort("shop_id")
    assert silver.select("shop_id", "city", "size_m2").rows() == [(1, "Lyon", 100), (2, "Oslo", 60), (3, "Oslo", 70),
                                                                   (4, "Pune", 20)]
    assert _touched(root, "silver/stores") == {"Lyon", "Oslo"}
    assert _touched(root, "gold/city_stores") == {"Lyon", "Oslo"}
    assert _gold(root) == _oracle(root) == [("Lyon", 1, 100), ("Oslo", 2, 130), ("Pune", 1, 20)]

    # and a run from scratch over the same files builds the same gold
    fresh = tmp_path / "fresh"
    for d in ("d1", "d2"):
        _land(fresh, d, (root / "raw/stores" / d / "part-0.csv").read_text().removeprefix(HEADER))
    assert lakehouse.run(_settings(fresh)).ok
    assert _gold(fresh) == _gold(root)

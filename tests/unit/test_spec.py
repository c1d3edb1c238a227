"""Declarations are checked when a pipeline loads: each error names the declaration and the field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lakehouse import (
    ConfigError,
    Gold,
    Pipeline,
    Silver,
    Source,
    aggregate,
    day,
    identity,
    lookup,
    month,
    per_partition,
)
from lakehouse.spec import load
from tests.shops import DailyCity, Sale, Shop, ShopTotals, by_city, per_shop, shop_totals


def pipeline(**changes: object) -> Pipeline:
    base = Pipeline(
        "shops",
        sources=[Source("sales"), Source("shops")],
        silver=[Silver("sales", Sale, keys="sale_id", partition=day("sold_on", as_="sale_day")),
                Silver("shops", Shop, keys="shop_id")],
        gold=[Gold("daily_city", DailyCity, partition="sale_day",
                   plan=per_partition("sales", by_city, shops=lookup("shops", key="shop_id"))),
              Gold("shop_totals", ShopTotals,
                   plan=aggregate("sales", by="shop_id", partial=per_shop, final=shop_totals))],
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_valid_pipeline_loads_and_orders_its_stages_by_dependency() -> None:
    p = pipeline().validate()
    assert p.stages() == [("bronze", "sales"), ("bronze", "shops"), ("silver", "sales"), ("silver", "shops"),
                          ("gold", "daily_city"), ("gold", "shop_totals")]
    assert p.gold_spec("shop_totals").keys == ("shop_id",)  # an unpartitioned aggregate's keys: its by columns


def gold(name: str, plan: object, partition: str | None = "sale_day", model: object = DailyCity) -> Gold:
    return Gold(name, model, plan=plan, partition=partition)  # type: ignore[arg-type]


@pytest.mark.parametrize(("declared", "message"), [
    ({"silver": [Silver("sales", Sale, keys="sale_id", source="sale")]},
     "Silver('sales'): source 'sale' is not a declared source"),
    ({"silver": [Silver("sales", Sale, keys="sale_key")]}, "Silver('sales'): keys names 'sale_key'"),
    ({"silver": [Silver("sales", Sale, keys="sale_id", partition=month("amount"))]},
     "partition column 'amount' must be a date or timestamp"),
    ({"silver": [Silver("sales", Sale, keys="sale_id", partition=month("sold_at"))]},
     "partition is derived from 'sold_at', which is not a column of Sale"),
    ({"gold": [gold("g", per_partition("sale", by_city, shops=lookup("shops")))]},
     "Gold('g'): input 'sale': pipeline shops: 'sale' is not a table of the pipeline"),
    ({"gold": [gold("g", per_partition("sales", by_city, shops=lookup("shops")), partition="day")]},
     "Gold('g'): partition column 'day' is not a column of DailyCity"),
    ({"gold": [gold("g", per_partition("sales", by_city))]},
     "by_city takes 'shops', which names no lookup of the plan"),
    ({"gold": [gold("g", per_partition("sales", per_shop, shops=lookup("shops")), model=ShopTotals,
                    partition="shop_id")]}, "lookup 'shops' is used by no function of the plan"),
    ({"gold": [gold("g", per_partition("shops", by_city, shops=lookup("shops")))]},
     "per_partition over 'shops', which is not partitioned"),
    ({"gold": [gold("g", aggregate("sales", partial=per_shop, final=shop_totals), partition=None, model=ShopTotals)]},
     "an unpartitioned aggregate needs by=(...)"),
    ({"gold": [gold("a", per_partition("b", lambda b: b)), gold("b", per_partition("a", lambda a: a))]},
     "the tables depend on each other in a cycle (gold.a -> gold.b)"),
    ({"gold": [gold("a", per_partition("a", lambda a: a))]}, "gold table 'a' reads itself"),
    ({"silver": [Silver("sales", dict, keys="sale_id")]}, "Silver('sales'): model must be a Pandera DataFrameModel"),
    ({"silver": [Silver("sales", Sale, keys="sale_id", partition=identity("amount"))]},
     "partition by the value of 'amount', a float"),
    ({"silver": [Silver("sales", Sale, keys="sale_id", partition=identity("shop_id"), lookback=2)]},
     "lookback needs a time partitioning"),
    ({"silver": [Silver("sales", Sale, keys="sale_id", partition=identity("shop_id")), Silver("shops", Shop,
                                                                                            keys="shop_id")],
      "gold": [gold("g", per_partition("sales", by_city, shops=lookup("shops"), window=3))]},
     "window=3 needs an input partitioned by a time grain"),
])
def test_a_declaration_that_cannot_work_is_refused_naming_it(declared: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        pipeline(**declared).validate()
    assert message in str(e.value)


def test_a_lookup_by_a_column_needs_its_key_and_through_must_name_a_lookup() -> None:
    with pytest.raises(ConfigError, match="by='shop_id' needs the key"):
        lookup("shops", by="shop_id")
    with pytest.raises(ConfigError, match="through='shop' names no lookup"):
        aggregate("sales", partial=per_shop, final=shop_totals, through="shop", shops=lookup("shops", key="shop_id"))


def test_pipelines_load_by_name_module_or_path_and_bad_files_are_named(tmp_path: Path) -> None:
    assert load("tpch").name == "tpch"
    assert load("examples.events.pipeline:PIPELINE").name == "events"
    (tmp_path / "mypipes").mkdir()
    (tmp_path / "mypipes" / "broken.py").write_text("import polars as pl\n\nx = 1 +\n")
    with pytest.raises(ConfigError, match=r"broken.py does not import: SyntaxError.*line 3"):
        load("mypipes/broken.py", project_dir=str(tmp_path))
    (tmp_path / "mypipes" / "empty.py").write_text("X = 1\n")
    with pytest.raises(ConfigError, match="holds no Pipeline; name one as module:attr"):
        load("mypipes/empty.py", project_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="unknown pipeline 'nope'"):
        load("nope")
    with pytest.raises(ConfigError, match="no such file"):
        load("mypipes/missing.py", project_dir=str(tmp_path))
    # a directory named like a standard module (pipes) would import that module: refused, saying so
    (tmp_path / "pipes").mkdir()
    (tmp_path / "pipes" / "x.py").write_text("X = 1\n")
    with pytest.raises(ConfigError, match="would import as pipes, which is already the module"):
        load("pipes/x.py", project_dir=str(tmp_path))

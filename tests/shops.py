"""Small declared pipelines for tests of declarations and of the gold engine (Ray workers import them by name): sales
by day with a shops lookup and totals per shop, and stores partitioned by the value of their city."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from lakehouse import Gold, Pipeline, Silver, Source, aggregate, day, identity, lookup, per_partition


class Sale(pa.DataFrameModel):
    sale_id: pl.Int64
    shop_id: pl.Int64
    sold_on: pl.Date
    amount: pl.Float64


class Shop(pa.DataFrameModel):
    shop_id: pl.Int64
    city: pl.String


class DailyCity(pa.DataFrameModel):
    sale_day: pl.Date
    city: pl.String = pa.Field(nullable=True)
    amount: pl.Float64


class ShopTotals(pa.DataFrameModel):
    shop_id: pl.Int64
    sales: pl.Int64 = pa.Field(ge=1)
    amount: pl.Float64 = pa.Field(ge=0)


def by_city(sales: pl.DataFrame, shops: pl.DataFrame) -> pl.DataFrame:
    return sales.join(shops, on="shop_id", how="left").group_by("sale_day", "city").agg(pl.col("amount").sum())


def per_shop(sales: pl.DataFrame) -> pl.DataFrame:
    return sales.group_by("shop_id").agg(pl.len().alias("sales"), pl.col("amount").sum())


def shop_totals(partials: pl.DataFrame) -> pl.DataFrame:
    return partials.group_by("shop_id").agg(pl.col("sales").sum(), pl.col("amount").sum())


PIPELINE = Pipeline(
    "shops",
    sources=[Source("sales", format="csv"), Source("shops", format="csv")],
    silver=[Silver("sales", Sale, keys="sale_id", partition=day("sold_on", as_="sale_day")),
            Silver("shops", Shop, keys="shop_id")],
    gold=[Gold("daily_city", DailyCity, partition="sale_day",
               plan=per_partition("sales", by_city, shops=lookup("shops", key="shop_id", columns=("city",)))),
          Gold("shop_totals", ShopTotals, plan=aggregate("sales", by="shop_id", partial=per_shop, final=shop_totals))],
)


class Store(pa.DataFrameModel):
    shop_id: pl.Int64
    city: pl.String
    size_m2: pl.Int64 = pa.Field(gt=0)


class CityStores(pa.DataFrameModel):
    city: pl.String
    stores: pl.Int64 = pa.Field(ge=1)
    size_m2: pl.Int64


def per_city(stores: pl.DataFrame) -> pl.DataFrame:
    return stores.group_by("city").agg(pl.len().alias("stores"), pl.col("size_m2").sum())


# Silver partitioned by the value of a column (identity), and a gold table aligned with its partitions.
STORES = Pipeline(
    "stores",
    sources=[Source("stores", format="csv")],
    silver=[Silver("stores", Store, keys="shop_id", partition=identity("city"))],
    gold=[Gold("city_stores", CityStores, partition="city", plan=per_partition("stores", per_city))],
)


def per_shop_entries(entries: pl.DataFrame) -> pl.DataFrame:
    return entries.group_by("shop_id").agg(pl.len().alias("sales"), pl.col("amount").sum())


class Entry(pa.DataFrameModel):
    entry_id: pl.Int64
    shop_id: pl.Int64
    amount: pl.Float64


# A ledger merged on its keys batch by batch (each batch's new keys land in new files), and totals per shop merged
# on theirs: the tables that grow small files for maintenance to compact.
LEDGER = Pipeline(
    "ledger",
    sources=[Source("entries", format="csv")],
    silver=[Silver("entries", Entry, keys="entry_id", write_mode="merge")],
    gold=[Gold("shop_totals", ShopTotals, plan=aggregate("entries", by="shop_id", partial=per_shop_entries,
                                                         final=shop_totals))],
)

"""TPC-H as a declared pipeline: five sources and their silver tables, customer change events (SCD 1 and 2), and
three gold tables, each a declaration plus plain Polars functions.

Gold semantics (the tests check them against DuckDB SQL over the raw files):

* ``revenue_by_nation_month``: per (order month, customer nation): revenue = sum(l_extendedprice * (1 - l_discount)),
  order_count = distinct orders, lineitem_count = lines. Every order's revenue counts, so the table reconciles with
  silver: a customer deleted by change events keeps the nation of their last version, and an order of a customer
  never seen counts under a null nation.
* ``customer_lifetime_value``: per current customer with an order: order count, sum of o_totalprice, first and last
  order date. A deleted customer leaves it.
* ``pricing_summary_monthly``: TPC-H Q1's aggregates per (ship month, return flag, line status).
"""

from __future__ import annotations

import polars as pl

from lakehouse import Cdc, Gold, Pipeline, Silver, Source, aggregate, lookup, month, per_partition
from schemas import tpch as m

DISCOUNTED = pl.col("l_extendedprice") * (1 - pl.col("l_discount"))


def customer_nations(customer: pl.DataFrame, nation: pl.DataFrame, deleted: pl.DataFrame | None = None
                     ) -> pl.DataFrame:
    """``c_custkey, c_name, nation`` of every customer, and of each deleted one as their last version (the latest
    version a delete closed)."""
    if deleted is not None and deleted.height:
        last = deleted.sort("_lsn").unique("c_custkey", keep="last", maintain_order=True)
        gone = last.select(customer.columns).join(customer.select("c_custkey"), on="c_custkey", how="anti")
        customer = pl.concat([customer, gone], how="vertical_relaxed")
    return customer.join(nation, left_on="c_nationkey", right_on="n_nationkey").select(
        "c_custkey", "c_name", pl.col("n_name").alias("nation"))


# --- revenue_by_nation_month: lines joined to their orders (broadcast by batches of order months) ---------------

def revenue_of_lines(lineitem: pl.DataFrame, orders: pl.DataFrame) -> pl.DataFrame:
    return (lineitem.join(orders, left_on="l_orderkey", right_on="o_orderkey")
            .group_by("order_month", "o_custkey", "l_orderkey")
            .agg(DISCOUNTED.sum().alias("revenue"), pl.len().alias("lines")))


def revenue_by_nation(lines: pl.DataFrame, customer: pl.DataFrame, nation: pl.DataFrame,
                      customer_history: pl.DataFrame) -> pl.DataFrame:
    nations = customer_nations(customer, nation, customer_history)
    return (lines.join(nations, left_on="o_custkey", right_on="c_custkey", how="left")
            .group_by("order_month", "nation")
            .agg(pl.col("revenue").sum(), pl.col("l_orderkey").n_unique().alias("order_count"),
                 pl.col("lines").sum().alias("lineitem_count")))


# --- customer_lifetime_value: orders aggregated per customer, then named -----------------------------------------

def orders_per_customer(orders: pl.DataFrame) -> pl.DataFrame:
    return orders.group_by("o_custkey").agg(
        pl.len().alias("order_count"), pl.col("o_totalprice").sum().alias("total_spent"),
        pl.col("o_orderdate").min().alias("first_order_date"), pl.col("o_orderdate").max().alias("last_order_date"))


def lifetime_value(partials: pl.DataFrame, customer: pl.DataFrame, nation: pl.DataFrame) -> pl.DataFrame:
    totals = partials.group_by("o_custkey").agg(
        pl.col("order_count").sum(), pl.col("total_spent").sum(), pl.col("first_order_date").min(),
        pl.col("last_order_date").max())
    named = totals.join(customer_nations(customer, nation), left_on="o_custkey", right_on="c_custkey")
    return named.rename({"o_custkey": "c_custkey"})


def merge_lifetime_values(values: pl.DataFrame) -> pl.DataFrame:
    """A salted customer's value from the slices of their orders: sums of sums, min of mins."""
    return values.group_by("c_custkey", "c_name", "nation").agg(
        pl.col("order_count", "total_spent").sum(), pl.col("first_order_date").min(), pl.col("last_order_date").max())


# --- pricing_summary_monthly: TPC-H Q1, one ship month at a time -------------------------------------------------

def pricing_summary(lineitem: pl.DataFrame) -> pl.DataFrame:
    return lineitem.group_by("l_returnflag", "l_linestatus").agg(
        pl.col("l_quantity").sum().alias("sum_qty"),
        pl.col("l_extendedprice").sum().alias("sum_base_price"),
        DISCOUNTED.sum().alias("sum_disc_price"),
        (DISCOUNTED * (1 + pl.col("l_tax"))).sum().alias("sum_charge"),
        pl.col("l_quantity").mean().alias("avg_qty"),
        pl.col("l_extendedprice").mean().alias("avg_price"),
        pl.col("l_discount").mean().alias("avg_disc"),
        pl.len().alias("count_order"),
    )


NATION = lookup("nation", columns=("n_nationkey", "n_name"))
CUSTOMER = lookup("customer", key="c_custkey", by="o_custkey", columns=("c_name", "c_nationkey"))

PIPELINE = Pipeline(
    "tpch",
    sources=[*(Source(name) for name in ("region", "nation", "customer", "orders", "lineitem")),
             Source("customer_cdc", format="ndjson")],
    silver=[
        Silver("region", m.Region, keys="r_regionkey"),
        Silver("nation", m.Nation, keys="n_nationkey"),
        Silver("customer", m.Customer, keys="c_custkey"),
        Silver("orders", m.Orders, keys="o_orderkey", partition=month("o_orderdate", as_="order_month")),
        Silver("lineitem", m.Lineitem, keys=("l_orderkey", "l_linenumber"),
               partition=month("l_shipdate", as_="ship_month")),
    ],
    # Debezium change events of customers (raw/customer_cdc/), applied to silver.customer after its snapshot.
    cdc=[Cdc("customer", source="customer_cdc", history="customer_history")],
    gold=[
        Gold("revenue_by_nation_month", m.RevenueByNationMonth, partition="order_month",
             plan=aggregate(
                 "lineitem", columns=("l_orderkey", "l_extendedprice", "l_discount"),
                 partial=revenue_of_lines, final=revenue_by_nation, through="orders",
                 orders=lookup("orders", key="o_orderkey", by="l_orderkey", columns=("o_custkey", "order_month")),
                 customer=CUSTOMER, nation=NATION,
                 customer_history=lookup("customer_history", key="c_custkey", by="o_custkey",
                                         columns=("c_name", "c_nationkey", "_lsn"),
                                         where=pl.col("_end_op").is_in(("d", "t"))))),
        Gold("customer_lifetime_value", m.CustomerLifetimeValue, keys="c_custkey",
             plan=aggregate("orders", by="o_custkey", columns=("o_custkey", "o_totalprice", "o_orderdate"),
                            partial=orders_per_customer, final=lifetime_value, merge=merge_lifetime_values,
                            customer=CUSTOMER, nation=NATION)),
        Gold("pricing_summary_monthly", m.PricingSummaryMonthly, partition="ship_month",
             plan=per_partition("lineitem", pricing_summary,
                                columns=("l_returnflag", "l_linestatus", "l_quantity", "l_extendedprice",
                                         "l_discount", "l_tax"))),
    ],
    demo="examples.tpch.demo:generate",
)

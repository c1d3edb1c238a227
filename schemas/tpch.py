"""TPC-H silver models (Pandera, polars backend).

Types: keys and counts are ``Int64``; money, quantities, discounts and taxes are ``Float64`` (TPC-H values have two
decimals; every consumer of ours reads float64 without a cast, and sums stay exact to well under a cent at SF 100);
dates are ``Date``; text is ``String``. Columns are required (not null) unless marked ``nullable``. A value that does
not parse to its column's type fails the row, like any other rule here.

Each model's ``Config.metadata`` holds the rest of its contract: ``actions`` of row rules other than quarantine
(``warn`` keeps the row and reports it, ``fail`` fails the run), and ``gates``, the table checks evaluated before a
commit (see ``lakehouse.quality.checks.Gates``). Thresholds a deployment sets (quarantined share, batch size,
freshness) can be set or overridden in the settings.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData

# Money and quantities are finite: the bound rejects inf (and NaN), which pass a bare ">= 0".
MAX_AMOUNT = 1e15
ORDER_STATUS = ["F", "O", "P"]
RETURN_FLAGS = ["A", "N", "R"]
LINE_STATUS = ["F", "O"]
USUAL_MAX_DISCOUNT = 0.10


# Month-over-month drift of TPC-H facts is small (uniform generators); these flag a broken feed, not seasonality.
FACT_DRIFT = {"null_share": 0.05, "mean": 0.25, "quantiles": 0.35}


class Region(pa.DataFrameModel):
    r_regionkey: pl.Int64 = pa.Field(ge=0)
    r_name: pl.String
    r_comment: pl.String = pa.Field(nullable=True)


class Nation(pa.DataFrameModel):
    n_nationkey: pl.Int64 = pa.Field(ge=0)
    n_name: pl.String
    n_regionkey: pl.Int64 = pa.Field(ge=0)
    n_comment: pl.String = pa.Field(nullable=True)

    class Config:
        metadata: ClassVar[dict[str, Any]] = {"gates": {"references": {"n_regionkey": "region.r_regionkey"}}}


class Customer(pa.DataFrameModel):
    c_custkey: pl.Int64 = pa.Field(ge=0)
    c_name: pl.String
    c_address: pl.String = pa.Field(nullable=True)
    c_nationkey: pl.Int64 = pa.Field(ge=0)
    c_phone: pl.String = pa.Field(nullable=True)
    c_acctbal: pl.Float64 = pa.Field(gt=-MAX_AMOUNT, lt=MAX_AMOUNT)
    c_mktsegment: pl.String = pa.Field(nullable=True)
    c_comment: pl.String = pa.Field(nullable=True)

    class Config:
        metadata: ClassVar[dict[str, Any]] = {"gates": {"references": {"c_nationkey": "nation.n_nationkey"}}}


class Orders(pa.DataFrameModel):
    o_orderkey: pl.Int64 = pa.Field(ge=0)
    o_custkey: pl.Int64 = pa.Field(ge=0)
    o_orderstatus: pl.String = pa.Field(isin=ORDER_STATUS)
    o_totalprice: pl.Float64 = pa.Field(ge=0, lt=MAX_AMOUNT)
    o_orderdate: pl.Date
    o_orderpriority: pl.String = pa.Field(nullable=True)
    o_clerk: pl.String = pa.Field(nullable=True)
    o_shippriority: pl.Int64 = pa.Field(nullable=True)
    o_comment: pl.String = pa.Field(nullable=True)

    class Config:
        metadata: ClassVar[dict[str, Any]] = {
            "gates": {
                "references": {"o_custkey": "customer.c_custkey"},
                # Orders fill their month when it is landed, so the row count is comparable month to month.
                "drift": {"rows": 0.5, **FACT_DRIFT},
            }
        }


class Lineitem(pa.DataFrameModel):
    l_orderkey: pl.Int64 = pa.Field(ge=0)
    l_partkey: pl.Int64 = pa.Field(ge=0)
    l_suppkey: pl.Int64 = pa.Field(ge=0)
    l_linenumber: pl.Int64 = pa.Field(ge=1)
    l_quantity: pl.Float64 = pa.Field(ge=0, lt=MAX_AMOUNT)
    l_extendedprice: pl.Float64 = pa.Field(ge=0, lt=MAX_AMOUNT)
    l_discount: pl.Float64 = pa.Field(ge=0, le=1)
    l_tax: pl.Float64 = pa.Field(ge=0, le=1)
    l_returnflag: pl.String = pa.Field(isin=RETURN_FLAGS)
    l_linestatus: pl.String = pa.Field(isin=LINE_STATUS)
    l_shipdate: pl.Date
    l_commitdate: pl.Date
    l_receiptdate: pl.Date
    l_shipinstruct: pl.String = pa.Field(nullable=True)
    l_shipmode: pl.String = pa.Field(nullable=True)
    l_comment: pl.String = pa.Field(nullable=True)

    @pa.check("l_discount", name="usual_discount")
    def usual_discount(cls, data: PolarsData) -> pl.LazyFrame:
        """TPC-H discounts are 0-10%; a larger one is possible but worth a look."""
        return data.lazyframe.select(pl.col(data.key) <= USUAL_MAX_DISCOUNT)

    class Config:
        metadata: ClassVar[dict[str, Any]] = {
            "actions": {"usual_discount": "warn"},
            "gates": {
                "references": {"l_orderkey": "orders.o_orderkey"},
                # No row-count drift: a ship month fills over the four months after its orders are landed.
                "drift": FACT_DRIFT,
            },
        }


# --- gold ---------------------------------------------------------------------------------------------------------


class RevenueByNationMonth(pa.DataFrameModel):
    """Revenue per order month and customer nation (null: an order whose customer is unknown)."""

    nation: pl.String = pa.Field(nullable=True)
    revenue: pl.Float64
    order_count: pl.Int64 = pa.Field(ge=1)
    lineitem_count: pl.Int64 = pa.Field(ge=1)
    order_month: pl.Date


class CustomerLifetimeValue(pa.DataFrameModel):
    """Per current customer with at least one order."""

    c_custkey: pl.Int64 = pa.Field(ge=0)
    c_name: pl.String
    nation: pl.String
    order_count: pl.Int64 = pa.Field(ge=1)
    total_spent: pl.Float64
    first_order_date: pl.Date
    last_order_date: pl.Date


class PricingSummaryMonthly(pa.DataFrameModel):
    """TPC-H Q1's aggregates per ship month, return flag and line status."""

    l_returnflag: pl.String
    l_linestatus: pl.String
    sum_qty: pl.Float64
    sum_base_price: pl.Float64
    sum_disc_price: pl.Float64
    sum_charge: pl.Float64
    avg_qty: pl.Float64
    avg_price: pl.Float64
    avg_disc: pl.Float64
    count_order: pl.Int64 = pa.Field(ge=1)
    ship_month: pl.Date

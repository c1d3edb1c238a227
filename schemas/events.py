"""Web events: silver models of the events, users and products, and the models of the three gold tables.

Types: ids and counts ``Int64``; money ``Float64``; ``ts`` a UTC timestamp (microseconds); days ``Date``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import pandera.polars as pa
import polars as pl

EVENT_TYPES = ["view", "add_to_cart", "purchase"]
MAX_AMOUNT = 1e9


class Event(pa.DataFrameModel):
    event_id: pl.String
    ts: Annotated[pl.Datetime, "us", "UTC"]
    user_id: pl.Int64 = pa.Field(ge=0)
    session_id: pl.String
    event_type: pl.String = pa.Field(isin=EVENT_TYPES)
    product_id: pl.Int64 = pa.Field(ge=0, nullable=True)
    amount: pl.Float64 = pa.Field(ge=0, lt=MAX_AMOUNT, nullable=True)

    class Config:
        metadata: ClassVar[dict[str, Any]] = {"gates": {"references": {"user_id": "users.user_id"}}}


class User(pa.DataFrameModel):
    user_id: pl.Int64 = pa.Field(ge=0)
    name: pl.String
    country: pl.String
    signup_date: pl.Date


class Product(pa.DataFrameModel):
    product_id: pl.Int64 = pa.Field(ge=0)
    name: pl.String
    category: pl.String
    price: pl.Float64 = pa.Field(ge=0, lt=MAX_AMOUNT)


# --- gold ---------------------------------------------------------------------------------------------------------


class DailyCountry(pa.DataFrameModel):
    """Per day and country of the user (null: a user not in the users table)."""

    event_day: pl.Date
    country: pl.String = pa.Field(nullable=True)
    active_users: pl.Int64 = pa.Field(ge=1)
    events: pl.Int64 = pa.Field(ge=1)
    purchases: pl.Int64 = pa.Field(ge=0)
    revenue: pl.Float64 = pa.Field(ge=0)


class CategoryRevenueDaily(pa.DataFrameModel):
    """Purchases per day and product category (null: a product not in the products table)."""

    event_day: pl.Date
    category: pl.String = pa.Field(nullable=True)
    purchases: pl.Int64 = pa.Field(ge=1)
    buyers: pl.Int64 = pa.Field(ge=1)
    revenue: pl.Float64 = pa.Field(ge=0)


class UserTotals(pa.DataFrameModel):
    """Per user who has an event: lifetime counts and spend."""

    user_id: pl.Int64 = pa.Field(ge=0)
    events: pl.Int64 = pa.Field(ge=1)
    sessions: pl.Int64 = pa.Field(ge=1)
    purchases: pl.Int64 = pa.Field(ge=0)
    spent: pl.Float64 = pa.Field(ge=0)
    first_seen: Annotated[pl.Datetime, "us", "UTC"]
    last_seen: Annotated[pl.Datetime, "us", "UTC"]

"""Web events as a declared pipeline: events by day, two dimensions, and three gold tables.

* ``daily_country``: per day and the user's country: active users, events, purchases, revenue.
* ``category_revenue_daily``: per day and product category: purchases, distinct buyers, revenue.
* ``user_totals``: per user, over all time: events, distinct sessions, purchases, spend, first and last seen;
  unpartitioned and merged on ``user_id``, so a new day rewrites only the totals of the users it saw. A heavy user's
  sessions are salted over several final tasks (``merge``, ``salt_by``): see lakehouse.gold.salting.
"""

from __future__ import annotations

import polars as pl

from lakehouse import Gold, Pipeline, Silver, Source, aggregate, day, lookup, per_partition
from schemas import events as m

PURCHASE = pl.col("event_type") == "purchase"


def daily_country(events: pl.DataFrame, users: pl.DataFrame) -> pl.DataFrame:
    return (events.join(users, on="user_id", how="left")
            .group_by("event_day", "country")
            .agg(pl.col("user_id").n_unique().alias("active_users"), pl.len().alias("events"),
                 PURCHASE.sum().alias("purchases"), pl.col("amount").filter(PURCHASE).sum().alias("revenue")))


def category_revenue(events: pl.DataFrame, products: pl.DataFrame) -> pl.DataFrame:
    return (events.filter(PURCHASE).join(products, on="product_id", how="left")
            .group_by("event_day", "category")
            .agg(pl.len().alias("purchases"), pl.col("user_id").n_unique().alias("buyers"),
                 pl.col("amount").sum().alias("revenue")))


def sessions_of_users(events: pl.DataFrame) -> pl.DataFrame:
    """Per (user, session) in one file: a session may span files, so sessions are counted in the final step."""
    return events.group_by("user_id", "session_id").agg(
        pl.len().alias("events"), PURCHASE.sum().alias("purchases"),
        pl.col("amount").filter(PURCHASE).sum().alias("spent"),
        pl.col("ts").min().alias("first_seen"), pl.col("ts").max().alias("last_seen"))


def user_totals(sessions: pl.DataFrame) -> pl.DataFrame:
    return sessions.group_by("user_id").agg(
        pl.col("events").sum(), pl.col("session_id").n_unique().alias("sessions"), pl.col("purchases").sum(),
        pl.col("spent").sum(), pl.col("first_seen").min(), pl.col("last_seen").max())


def merge_totals(totals: pl.DataFrame) -> pl.DataFrame:
    """A heavy user's totals from slices of their sessions (salted by session, so the session counts add up)."""
    return totals.group_by("user_id").agg(
        pl.col("events", "sessions", "purchases", "spent").sum(), pl.col("first_seen").min(),
        pl.col("last_seen").max())


PIPELINE = Pipeline(
    "events",
    sources=[Source("events", format="ndjson"), Source("users", format="csv"), Source("products", format="parquet")],
    silver=[
        Silver("events", m.Event, keys="event_id", partition=day("ts", as_="event_day")),
        Silver("users", m.User, keys="user_id"),
        Silver("products", m.Product, keys="product_id"),
    ],
    gold=[
        Gold("daily_country", m.DailyCountry, partition="event_day",
             plan=per_partition("events", daily_country, columns=("user_id", "event_type", "amount", "event_day"),
                                users=lookup("users", key="user_id", columns=("country",)))),
        Gold("category_revenue_daily", m.CategoryRevenueDaily, partition="event_day",
             plan=per_partition("events", category_revenue,
                                columns=("user_id", "product_id", "event_type", "amount", "event_day"),
                                products=lookup("products", key="product_id", columns=("category",)))),
        Gold("user_totals", m.UserTotals,
             plan=aggregate("events", by="user_id", partial=sessions_of_users, final=user_totals,
                            merge=merge_totals, salt_by="session_id",
                            columns=("user_id", "session_id", "event_type", "amount", "ts"))),
    ],
    demo="examples.events.demo:generate",
)

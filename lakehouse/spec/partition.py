"""How a table is partitioned: by a time grain (day, month, year) of a date or timestamp column, stored as a date
column of its own (``order_month`` = the first day of the month of ``o_orderdate``), or by the value of a column
itself (``identity("country")``, Iceberg's name for it).

Time partition values are ISO dates (``1995-03-01``), so they sort as the periods do; :meth:`Partitioning.shift`
moves a value by whole periods (the lookback window, the previous partition that drift compares with). What is
about periods (lookback, late rows, backfills by month, freshness and drift against the previous period) applies
to time partitionings only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

import polars as pl

Grain = Literal["day", "month", "year", "identity"]
GRAINS: tuple[Grain, ...] = ("day", "month", "year", "identity")
_INTERVAL = {"day": "1d", "month": "1mo", "year": "1y"}


@dataclass(frozen=True)
class Partitioning:
    """Partition a table by the ``grain`` of ``source_column``, stored as the date column ``column``; or, grain
    ``identity``, by the values of ``source_column`` itself (``column`` is the same column)."""

    column: str
    source_column: str
    grain: Grain = "month"

    @property
    def time(self) -> bool:
        """Is this a partitioning by periods of time (so lookback, late rows and drift apply)?"""
        return self.grain != "identity"

    def expr(self) -> pl.Expr:
        """The partition column computed from the source column (a date: the first day of its period)."""
        if not self.time:
            return pl.col(self.source_column).alias(self.column)
        return pl.col(self.source_column).dt.truncate(_INTERVAL[self.grain]).cast(pl.Date).alias(self.column)

    def start(self, day: dt.date) -> dt.date:
        """The first day of the period ``day`` falls in."""
        if self.grain == "day":
            return day
        if self.grain == "month":
            return day.replace(day=1)
        return day.replace(month=1, day=1)

    def shift(self, value: str, periods: int) -> str:
        """The partition value ``periods`` periods after ``value`` (before it when negative)."""
        if not self.time:
            raise ValueError(f"partitions by the value of {self.column!r} have no order of periods to shift along")
        day = dt.date.fromisoformat(value)
        if self.grain == "day":
            return (day + dt.timedelta(days=periods)).isoformat()
        if self.grain == "month":
            index = day.year * 12 + day.month - 1 + periods
            return dt.date(index // 12, index % 12 + 1, 1).isoformat()
        return dt.date(day.year + periods, 1, 1).isoformat()

    def label(self, value: str) -> str:
        """How a partition value is shown: ``1995-03-15``, ``1995-03`` or ``1995``."""
        return {"day": value[:10], "month": value[:7], "year": value[:4]}.get(self.grain, value)


def identity(column: str) -> Partitioning:
    """Partition by the values of ``column`` itself (a column of the model: a region, a country, a tenant), one
    partition per distinct value. Suits a column of few values; a run rewrites the values its new rows hold."""
    return Partitioning(column=column, source_column=column, grain="identity")


def _partitioning(grain: Grain, column: str, as_: str | None) -> Partitioning:
    return Partitioning(column=as_ or f"{column}_{grain}", source_column=column, grain=grain)


def day(column: str, *, as_: str | None = None) -> Partitioning:
    """Partition by the day of date or timestamp ``column``, stored as ``as_`` (default ``<column>_day``)."""
    return _partitioning("day", column, as_)


def month(column: str, *, as_: str | None = None) -> Partitioning:
    """Partition by the month of ``column`` (its first day), stored as ``as_`` (default ``<column>_month``)."""
    return _partitioning("month", column, as_)


def year(column: str, *, as_: str | None = None) -> Partitioning:
    """Partition by the year of ``column`` (its first day), stored as ``as_`` (default ``<column>_year``)."""
    return _partitioning("year", column, as_)

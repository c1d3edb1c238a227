"""Key ranges of data files from their Delta statistics: which files can hold a set of keys, read only by range (a
file without statistics may hold any key)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl

from lakehouse.storage.files import timestamp_stat
from lakehouse.table.delta import TableFile


def ranged_item(f: TableFile, key: str) -> dict[str, Any]:
    """A file's task item with the range of its ``key`` column (``low``, ``high``), for :func:`may_hold`."""
    low, high = bounds(f, key)
    return f.item() | {"low": low, "high": high}


def may_hold(item: dict[str, Any], keys: pl.Series) -> bool:
    """Can the file of a :func:`ranged_item` hold one of ``keys`` (its first key column's values)? Only its range is
    consulted: a file without statistics may hold any."""
    if item["low"] is None or item["high"] is None:
        return True
    low, high = (typed(v, keys.dtype) for v in (item["low"], item["high"]))
    return bool(keys.is_between(low, high).any())


def stat(value: Any) -> Any:
    """A statistic in one comparable form: dates and times as ISO text (the log gives them typed, staged files as
    JSON text, as :func:`~lakehouse.storage.files.timestamp_stat` writes a timestamp), numbers and text as they are."""
    if isinstance(value, dt.datetime):
        return timestamp_stat(value)
    return value.isoformat() if isinstance(value, dt.date) else value


def bounds(f: TableFile, key: str) -> tuple[Any, Any]:
    """The file's min and max of ``key`` from the log (None when unknown), in :func:`stat` form."""
    return stat(f.mins.get(key)), stat(f.maxs.get(key))


def overlaps(f: TableFile, key: str, low: Any, high: Any) -> bool:
    """Can file ``f`` hold a key in [low, high]? Unknown statistics mean it can."""
    f_low, f_high = bounds(f, key)
    if None in (low, high, f_low, f_high):
        return True
    return bool(f_low <= high and low <= f_high)


def typed(value: Any, dtype: pl.DataType) -> Any:
    """A statistic (JSON value, dates as ISO text) as a value of the key column's type."""
    if dtype == pl.Date and isinstance(value, str):
        return dt.date.fromisoformat(value[:10])
    if dtype == pl.Datetime and isinstance(value, str):
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return pl.Series([value]).cast(dtype)[0]

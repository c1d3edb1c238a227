"""Partitionings: the time partition a date falls in, moving a partition value by whole periods, and partitions by
a column's value."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from lakehouse import day, identity, month, year


def test_shift_moves_by_whole_periods_across_year_ends() -> None:
    m = month("o_orderdate", as_="order_month")
    assert m.shift("1993-01-01", -1) == "1992-12-01"
    assert m.shift("1992-03-01", -1) == "1992-02-01"
    assert m.shift("1992-11-01", 14) == "1994-01-01"
    assert day("ts").shift("2024-03-01", -1) == "2024-02-29"
    assert year("d").shift("2020-01-01", -3) == "2017-01-01"


def test_the_partition_column_is_the_first_day_of_the_period_of_a_date_or_a_utc_timestamp() -> None:
    df = pl.DataFrame({
        "d": [dt.date(2024, 2, 29)],
        "ts": [dt.datetime(2024, 2, 29, 23, 59, 59, tzinfo=dt.UTC)],
    }).with_columns(pl.col("ts").dt.replace_time_zone("UTC"))
    got = df.select(day("ts", as_="a").expr(), month("d", as_="b").expr(), year("ts", as_="c").expr()).row(0)
    assert got == (dt.date(2024, 2, 29), dt.date(2024, 2, 1), dt.date(2024, 1, 1))
    assert month("d").column == "d_month" and day("ts").column == "ts_day"
    assert [month("d").label("1995-03-01"), year("d").label("1995-01-01")] == ["1995-03", "1995"]


def test_an_identity_partitioning_is_the_column_itself_and_has_no_periods() -> None:
    p = identity("city")
    assert (p.column, p.source_column, p.time) == ("city", "city", False) and month("d").time
    df = pl.DataFrame({"city": ["Lyon", None]})
    assert df.select(p.expr()).get_column("city").to_list() == ["Lyon", None]
    assert p.label("Lyon") == "Lyon"
    with pytest.raises(ValueError, match="no order of periods"):
        p.shift("Lyon", -1)

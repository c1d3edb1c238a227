"""Data files written by workers and the Delta statistics that make data skipping work."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pytest

from lakehouse.storage import Storage
from lakehouse.storage.files import (
    DataFile,
    delta_stats,
    partition_dir,
    partition_value,
    read_data_file,
    write_data_file,
)


def _stats(data: pa.Table, **kwargs: object) -> dict:
    return json.loads(delta_stats(data, **kwargs))  # type: ignore[arg-type]


def test_stats_count_rows_min_max_and_nulls_per_column() -> None:
    # given a batch with ints, floats, strings, dates and nulls
    data = pa.table(
        {
            "k": pa.array([3, 1, None, 7], pa.int64()),
            "price": pa.array([2.5, None, 0.25, 10.0], pa.float64()),
            "flag": pa.array(["N", "A", "R", None], pa.string()),
            "day": pa.array([dt.date(1995, 3, 1), dt.date(1992, 1, 2), None, dt.date(1998, 12, 1)], pa.date32()),
        }
    )

    # when its statistics are computed
    stats = _stats(data)

    # then they are the Delta JSON stats of exactly those values
    assert stats["numRecords"] == 4
    assert stats["minValues"] == {"k": 1, "price": 0.25, "flag": "A", "day": "1992-01-02"}
    assert stats["maxValues"] == {"k": 7, "price": 10.0, "flag": "R", "day": "1998-12-01"}
    assert stats["nullCount"] == {"k": 1, "price": 1, "flag": 1, "day": 1}


def test_all_null_and_unsupported_columns_get_null_counts_only() -> None:
    data = pa.table(
        {
            "empty": pa.array([None, None], pa.string()),
            "naive": pa.array([dt.datetime(2024, 1, 1, 12, 0, 0, 123456), None], pa.timestamp("us")),
            "ok": pa.array([True, False], pa.bool_()),
        }
    )
    stats = _stats(data)
    assert stats["minValues"] == {} and stats["maxValues"] == {}
    assert stats["nullCount"] == {"empty": 2, "naive": 1, "ok": 0}


def test_utc_timestamps_get_millisecond_bounds_that_still_hold_every_value() -> None:
    # given microsecond timestamps (Delta statistics keep milliseconds)
    values = [dt.datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=dt.UTC), dt.datetime(2024, 1, 2, 8, 30, 0, 999001,
                                                                                    tzinfo=dt.UTC), None]
    exact = [dt.datetime(2024, 1, 3, tzinfo=dt.UTC)]
    stats = _stats(pa.table({"ts": pa.array(values, pa.timestamp("us", tz="UTC")),
                             "whole": pa.array(exact * 3, pa.timestamp("ms", tz="UTC"))}))

    # then the min is rounded down and the max up to the millisecond, so no value lies outside them
    assert stats["minValues"] == {"ts": "2024-01-01T12:00:00.123Z", "whole": "2024-01-03T00:00:00.000Z"}
    assert stats["maxValues"] == {"ts": "2024-01-02T08:30:01.000Z", "whole": "2024-01-03T00:00:00.000Z"}
    assert stats["nullCount"] == {"ts": 1, "whole": 0}


def test_long_strings_are_left_out_of_min_max() -> None:
    # given a column whose max is longer than a stat may be (truncating it would make skipping wrong)
    long = "z" * 65
    data = pa.table({"comment": ["a", long], "short": ["x" * 64, "y"]})

    stats = _stats(data)

    assert "comment" not in stats["minValues"] and "comment" not in stats["maxValues"]
    assert stats["minValues"]["short"] == "x" * 64
    assert stats["maxValues"]["short"] == "y"
    assert stats["nullCount"]["comment"] == 0


def test_constant_overrides_stats_whatever_the_length_and_even_with_no_rows() -> None:
    path = "raw/orders/" + "d" * 100 + "/part-0.csv"
    full = pa.table({"_source_file": [path, path], "v": ["1", "2"]})
    empty = full.slice(0, 0)

    for data in (full, empty):
        stats = _stats(data, constant={"_source_file": path})
        assert stats["minValues"]["_source_file"] == path
        assert stats["maxValues"]["_source_file"] == path
        assert stats["numRecords"] == data.num_rows
    assert "v" not in _stats(empty)["minValues"]


def test_partition_paths_and_values() -> None:
    assert partition_dir({"order_month": "1995-03-01"}) == "order_month=1995-03-01"
    assert partition_dir({"a": "1", "b": None}) == "a=1/b=__HIVE_DEFAULT_PARTITION__"
    assert partition_dir({}) == ""
    assert partition_value(dt.date(1995, 3, 1)) == "1995-03-01"
    assert partition_value(dt.datetime(1995, 3, 1, 4, 5, 6)) == "1995-03-01 04:05:06"
    assert partition_value(7) == "7"
    assert partition_value(None) is None


def test_write_data_file_writes_parquet_under_the_table_and_describes_it(tmp_path: Path) -> None:
    # given a storage root and a batch for one partition
    storage = Storage(str(tmp_path))
    data = pa.table({"k": pa.array([2, 1], pa.int64()), "s": ["b", "a"]})

    # when a worker writes it
    written = write_data_file(storage, "silver/t", data, partition_values={"m": "1995-03-01"}, prefix="part-r1")

    # then the file exists where the DataFile says, holds the rows, and the description round-trips as JSON
    assert written.path.startswith("m=1995-03-01/part-r1-") and written.path.endswith(".parquet")
    assert (tmp_path / "silver/t" / written.path).stat().st_size == written.size
    assert written.rows == 2 and written.partition_values == {"m": "1995-03-01"}
    assert json.loads(written.stats)["maxValues"] == {"k": 2, "s": "b"}
    assert written.modification_time > 0
    assert read_data_file(storage, "silver/t", written.path).equals(data)
    assert DataFile.from_json(written.to_json()) == written
    assert not [p for p in (tmp_path / "silver/t").rglob("*") if p.name.startswith(".")]


def test_a_file_written_batch_by_batch_has_the_stats_and_row_groups_of_one_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import polars as pl
    import pyarrow.parquet as pq

    from lakehouse.storage import files

    # given batches where a long string, a NaN-only float and an all-null column show up in some batches only
    batches = [
        pa.table({"k": [5, 2], "s": ["b", "c"], "x": [float("nan"), float("nan")], "n": pa.array([None, None],
                                                                                                pa.int64()),
                  "d": [dt.date(1995, 3, 1), dt.date(1995, 1, 1)]}),
        pa.table({"k": [9, 1], "s": ["a", "z" * 70], "x": [1.5, float("nan")], "n": pa.array([None, 4], pa.int64()),
                  "d": [dt.date(1996, 1, 1), None]}),
        pa.table({"k": [3], "s": ["d"], "x": [-2.0], "n": pa.array([1], pa.int64()), "d": [dt.date(1990, 5, 5)]}),
    ]
    whole = pa.concat_tables(batches)
    monkeypatch.setattr(files, "ROW_GROUP_ROWS", 3)

    # when written batch by batch
    writer = files.DataFileWriter(Storage(str(tmp_path)), "silver/t", whole.schema, prefix="w")
    for batch in batches:
        writer.write(batch)
    written = writer.close()

    # then the stats are those of the whole table (min/max skip NaN; a long string leaves the column without bounds),
    # batches are gathered into row groups of ROW_GROUP_ROWS, and no temporary file is left
    expected = json.loads(delta_stats(whole))
    assert json.loads(written.stats) == expected
    assert expected["minValues"] == {"k": 1, "x": -2.0, "n": 1, "d": "1990-05-05"}
    path = tmp_path / "silver/t" / written.path
    assert pl.from_arrow(pq.read_table(path)).equals(pl.from_arrow(whole))  # type: ignore[union-attr]
    metadata = pq.ParquetFile(path).metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [3, 2]
    assert sorted(p.name for p in (tmp_path / "silver/t").iterdir()) == [written.path]

    # and an aborted writer leaves nothing, and aborting a closed one does nothing
    dropped = files.DataFileWriter(Storage(str(tmp_path)), "silver/t", whole.schema, prefix="w")
    dropped.write(batches[0])
    dropped.abort()
    writer.abort()
    assert sorted(p.name for p in (tmp_path / "silver/t").iterdir()) == [written.path]

"""Parquet data files written by workers straight into a table's location, with the Delta statistics of each file.

Workers call :func:`write_data_file` and return the :class:`DataFile` it gives back; the driver turns those into
Delta add actions (in :mod:`lakehouse.table`). Partition columns are not stored in the files (Delta convention):
their values live in the path and in the log.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import posixpath
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lakehouse.storage import Storage

# Longer strings are left out of min/max stats: a truncated max would be wrong, and long text is never a key.
_MAX_STAT_STRING = 64


@dataclass(frozen=True)
class DataFile:
    """A Parquet file written under a table, as the driver needs it to commit (path relative to the table)."""

    path: str
    size: int
    rows: int
    partition_values: dict[str, str | None] = field(default_factory=dict)
    stats: str = "{}"
    modification_time: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> DataFile:
        return cls(**json.loads(text))


def partition_dir(partition_values: dict[str, str | None]) -> str:
    return "/".join(f"{k}={'__HIVE_DEFAULT_PARTITION__' if v is None else v}" for k, v in partition_values.items())


def partition_value(value: Any) -> str | None:
    """The Delta string form of a partition value."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def write_data_file(
    storage: Storage,
    table_rel: str,
    data: pa.Table,
    *,
    partition_values: dict[str, str | None] | None = None,
    prefix: str = "part",
    constant: dict[str, str] | None = None,
    stats: bool = True,
) -> DataFile:
    """Write ``data`` (without partition columns) as one Parquet file under the table and describe it.

    ``constant`` names columns that hold one value in this file (a bronze file's ``_source_file``): their stats are
    exact whatever their length, and set even when the file has no rows, so the log alone tells what was ingested.
    ``stats=False``: none, in the log or in the file, and no dictionary encoding (a staged file, read once whole and
    never skipped by statistics: dictionary encoding is most of the cost of writing one, measured at 25 vs 7 ms for
    the 50K partial rows of a TPC-H SF 1 lineitem file).
    """
    partition_values = partition_values or {}
    sub = partition_dir(partition_values)
    name = f"{prefix}-{uuid.uuid4().hex}.parquet"
    rel = posixpath.join(sub, name) if sub else name
    buf = io.BytesIO()
    pq.write_table(data, buf, compression="snappy", row_group_size=ROW_GROUP_ROWS, use_dictionary=stats,
                   write_statistics=stats)
    payload = buf.getvalue()
    storage.write_bytes_atomic(posixpath.join(table_rel, rel), payload)
    return DataFile(
        path=rel,
        size=len(payload),
        rows=data.num_rows,
        partition_values=partition_values,
        stats=delta_stats(data, constant=constant) if stats else "{}",
        modification_time=int(time.time() * 1000),
    )


ROW_GROUP_ROWS = 256 * 1024


class DataFileWriter:
    """One Parquet data file written batch by batch (memory: a row group), described like :func:`write_data_file`
    when closed; readers never see it half written (a temporary name on local disk, an S3 upload completes at close).
    On S3 an upload cannot be cancelled: :meth:`abort` completes it and deletes the object, which nothing refers to."""

    def __init__(self, storage: Storage, table_rel: str, schema: pa.Schema, *,
                 partition_values: dict[str, str | None] | None = None, prefix: str = "part") -> None:
        self.partition_values = partition_values or {}
        sub = partition_dir(self.partition_values)
        name = f"{prefix}-{uuid.uuid4().hex}.parquet"
        self.rel = posixpath.join(sub, name) if sub else name
        self._fs = storage.filesystem()
        self._target = storage.fs_path(posixpath.join(table_rel, self.rel))
        self._path = self._target if storage.is_s3 else posixpath.join(
            posixpath.dirname(self._target), f".{posixpath.basename(self._target)}.tmp")
        self._fs.create_dir(posixpath.dirname(self._target), recursive=True)
        self._stream = self._fs.open_output_stream(self._path)
        self._writer = pq.ParquetWriter(self._stream, schema, compression="snappy")
        self._stats = _Stats()
        self._buffer: list[pa.Table] = []  # batches written as one row group once they hold ROW_GROUP_ROWS rows
        self._buffered = 0
        self._finished = False
        self.rows = 0

    def write(self, data: pa.Table) -> None:
        if not data.num_rows:
            return
        self._stats.update(data)
        self.rows += data.num_rows
        self._buffer.append(data)
        self._buffered += data.num_rows
        while self._buffered >= ROW_GROUP_ROWS:  # whole row groups out, the rest waits for more
            buffered = pa.concat_tables(self._buffer)
            self._writer.write_table(buffered.slice(0, ROW_GROUP_ROWS), row_group_size=ROW_GROUP_ROWS)
            rest = buffered.slice(ROW_GROUP_ROWS)
            self._buffer, self._buffered = [rest], rest.num_rows

    def _flush(self) -> None:
        if self._buffered:
            self._writer.write_table(pa.concat_tables(self._buffer), row_group_size=ROW_GROUP_ROWS)
        self._buffer, self._buffered = [], 0

    def close(self) -> DataFile:
        self._flush()
        self._writer.close()
        self._stream.close()
        if self._path != self._target:
            self._fs.move(self._path, self._target)
        self._finished = True
        return DataFile(path=self.rel, size=self._fs.get_file_info(self._target).size, rows=self.rows,
                        partition_values=self.partition_values, stats=self._stats.json(self.rows),
                        modification_time=int(time.time() * 1000))

    def abort(self) -> None:
        """Drop the file: nothing refers to it (nothing to do once closed or aborted)."""
        if self._finished:
            return
        self._finished = True
        try:
            self._writer.close()
            self._stream.close()
        finally:
            if self._fs.get_file_info(self._path).type != pafs.FileType.NotFound:
                self._fs.delete_file(self._path)


def read_data_file(storage: Storage, table_rel: str, file: str, columns: list[str] | None = None) -> pa.Table:
    with storage.open_input(posixpath.join(table_rel, file)) as f:
        return pq.read_table(f, columns=columns)


def iter_data_file(
    storage: Storage, table_rel: str, file: str, *, batch_rows: int, columns: list[str] | None = None
) -> Iterator[pa.Table]:
    """A data file as tables of at most ``batch_rows`` rows, decoded one at a time."""
    with storage.open_input(posixpath.join(table_rel, file)) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=columns):
            yield pa.Table.from_batches([batch])


def delta_stats(data: pa.Table, *, constant: dict[str, str] | None = None) -> str:
    """Delta JSON statistics (numRecords, minValues, maxValues, nullCount) so readers can skip files."""
    stats = _Stats()
    stats.update(data)
    return stats.json(data.num_rows, constant=constant)


class _Stats:
    """Per-column min, max and null count, gathered over one or more tables (the batches of a file)."""

    def __init__(self) -> None:
        self.mins: dict[str, Any] = {}
        self.maxs: dict[str, Any] = {}
        self.nulls: dict[str, int] = {}

    def update(self, data: pa.Table) -> None:
        for name, column in zip(data.column_names, data.columns, strict=True):
            self.nulls[name] = self.nulls.get(name, 0) + column.null_count
            if data.num_rows == column.null_count or not _has_stats(column.type):
                continue
            mm = pc.min_max(column)
            lo, hi = mm["min"].as_py(), mm["max"].as_py()
            if lo != lo or hi != hi:
                continue  # NaN: min_max skips NaN unless a batch holds nothing else; no bound from it
            if isinstance(lo, dt.datetime):  # Delta keeps milliseconds: widen the bounds to whole ones
                lo, hi = _floor_ms(lo), _ceil_ms(hi)
            self.mins[name] = lo if name not in self.mins else min(self.mins[name], lo)
            self.maxs[name] = hi if name not in self.maxs else max(self.maxs[name], hi)

    def json(self, rows: int, *, constant: dict[str, str] | None = None) -> str:
        bounded = [k for k in self.mins if not (isinstance(self.mins[k], str) and (
            len(self.mins[k]) > _MAX_STAT_STRING or len(self.maxs[k]) > _MAX_STAT_STRING))]
        mins = {k: _stat_value(self.mins[k]) for k in bounded}
        maxs = {k: _stat_value(self.maxs[k]) for k in bounded}
        for name, value in (constant or {}).items():
            mins[name] = maxs[name] = value
        return json.dumps({"numRecords": rows, "minValues": mins, "maxValues": maxs, "nullCount": self.nulls})


def _has_stats(t: pa.DataType) -> bool:
    return (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_date(t)
        # UTC timestamps (Delta's timestamp) to the millisecond, min rounded down and max up so they stay bounds
        or (pa.types.is_timestamp(t) and t.tz is not None and t.unit != "ns")
    )


def _floor_ms(value: dt.datetime) -> dt.datetime:
    return value - dt.timedelta(microseconds=value.microsecond % 1000)


def _ceil_ms(value: dt.datetime) -> dt.datetime:
    rest = value.microsecond % 1000
    return value + dt.timedelta(microseconds=1000 - rest) if rest else value


def timestamp_stat(value: dt.datetime) -> str:
    """A UTC timestamp as Delta statistics write it: ``2026-03-04T10:00:00.123Z``."""
    utc = value.astimezone(dt.UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def _stat_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return timestamp_stat(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value

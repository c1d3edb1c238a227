"""Small helpers shared by workers: reading a table's files into Polars and writing Polars frames as data files."""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl
import pyarrow as pa

from lakehouse.storage import Storage
from lakehouse.storage.files import DataFile, read_data_file, write_data_file

POLARS_TO_ARROW: dict[Any, pa.DataType] = {
    pl.Int64: pa.int64(),
    pl.Int32: pa.int32(),
    pl.Float64: pa.float64(),
    pl.Date: pa.date32(),
    pl.String: pa.string(),
    pl.Boolean: pa.bool_(),
}


def arrow_type(dtype: Any) -> pa.DataType:
    """The Arrow type of a model column's Polars type (a timestamp keeps its unit and time zone)."""
    if isinstance(dtype, pl.Datetime) or dtype == pl.Datetime:
        unit = getattr(dtype, "time_unit", None) or "us"
        return pa.timestamp(unit, tz=getattr(dtype, "time_zone", None))
    if isinstance(dtype, pl.Decimal):  # NUMERIC(p, s): exact, as Delta's decimal(p, s)
        return pa.decimal128(dtype.precision or 38, dtype.scale)
    try:
        return POLARS_TO_ARROW[dtype]
    except KeyError:
        raise TypeError(f"no Arrow type for model type {dtype}") from None


def read_files(
    storage: Storage,
    table_rel: str,
    files: list[dict[str, Any]],
    *,
    columns: list[str] | None = None,
    partition_types: dict[str, Any] | None = None,
) -> pl.DataFrame:
    """Read data files (``{"path", "partition_values"}``) of a table, adding the partition columns back, typed."""
    partition_types = partition_types or {}
    wanted = None if columns is None else [c for c in columns if c not in partition_types]
    frames = []
    for f in files:
        df = to_frame(read_data_file(storage, table_rel, f["path"], columns=wanted))
        for name, dtype in partition_types.items():
            if columns is None or name in columns:
                df = df.with_columns(partition_literal(f["partition_values"].get(name), dtype).alias(name))
        frames.append(df)
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames, how="vertical_relaxed")


def to_frame(data: pa.Table) -> pl.DataFrame:
    """An Arrow table as a Polars DataFrame (``pl.from_arrow`` is typed as maybe returning a Series)."""
    df = pl.from_arrow(data)
    assert isinstance(df, pl.DataFrame)
    return df


def partition_literal(value: str | None, dtype: Any) -> pl.Expr:
    if value is None:
        return pl.lit(None, dtype=dtype)
    if dtype == pl.Date:
        return pl.lit(dt.date.fromisoformat(value), dtype=pl.Date)
    return pl.lit(value).cast(dtype)


def to_arrow(df: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    """The frame as Arrow with exactly ``schema`` (column order and types)."""
    return df.select(schema.names).to_arrow().cast(schema)


def write_frame(
    storage: Storage,
    table_rel: str,
    df: pl.DataFrame,
    schema: pa.Schema,
    *,
    partition_values: dict[str, str | None] | None = None,
    prefix: str,
    max_rows: int,
) -> list[DataFile]:
    """Write ``df`` as files of at most ``max_rows`` rows (nothing for an empty frame)."""
    return [
        write_data_file(storage, table_rel, to_arrow(chunk, schema), partition_values=partition_values, prefix=prefix)
        for chunk in df.iter_slices(max_rows)
        if chunk.height
    ]


def without(schema: pa.Schema, names: list[str] | tuple[str, ...]) -> pa.Schema:
    return pa.schema([f for f in schema if f.name not in names])

"""Querying: DuckDB over the Delta tables, each addressable as ``layer.table`` (``gold.revenue_by_nation_month``)."""

from __future__ import annotations

import re

import duckdb
import pyarrow as pa

from lakehouse import table
from lakehouse.errors import QueryError
from lakehouse.storage import Storage

LAYERS = ("bronze", "silver", "gold", "quarantine", "_meta")


def connect(storage: Storage) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a schema per layer and a view per Delta table at its current version."""
    con = duckdb.connect()
    for ref in table.list_tables(storage, LAYERS):
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{ref.layer}"')
        dataset = table.to_arrow_dataset(storage, ref)
        name = f"__{ref.layer}__{ref.name}"
        con.register(name, dataset)
        con.execute(f'CREATE VIEW "{ref.layer}"."{ref.name}" AS SELECT * FROM "{name}"')
    return con


def query(storage: Storage, sql: str) -> pa.Table:
    """Run ``sql`` and return the result as Arrow; an unknown table gets an error listing the known ones."""
    con = connect(storage)
    try:
        return con.sql(_quote_meta(sql)).arrow().read_all()
    except duckdb.CatalogException as e:
        known = ", ".join(str(r) for r in table.list_tables(storage, LAYERS)) or "none"
        raise QueryError(f"{e}. Tables under {storage.root}: {known}") from e
    except duckdb.Error as e:
        raise QueryError(str(e)) from e


def _quote_meta(sql: str) -> str:
    # "_meta" starts with an underscore: quote it so `_meta.runs` works unquoted in user SQL; string literals and
    # quoted identifiers are matched first and left as they are.
    def sub(m: re.Match[str]) -> str:
        return m.group(0) if m.group(1) else '"_meta".'

    return re.sub(r"""('(?:[^']|'')*'|"(?:[^"]|"")*")|(?<![\w.])_meta\.""", sub, sql)


def render(result: pa.Table, fmt: str) -> str:
    """Render a result as an aligned text table, CSV or JSON lines."""
    if fmt == "csv":
        import io

        import pyarrow.csv as pacsv

        buf = io.BytesIO()
        pacsv.write_csv(result, buf)
        return buf.getvalue().decode()
    if fmt == "json":
        import json

        return "\n".join(json.dumps(row, default=str) for row in result.to_pylist())
    import polars as pl

    with pl.Config(tbl_rows=100, tbl_cols=30, tbl_width_chars=200, fmt_str_lengths=60):
        return str(pl.from_arrow(result))

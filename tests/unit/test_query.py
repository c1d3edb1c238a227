"""DuckDB over the Delta tables, each addressed as layer.table, _meta included."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from lakehouse.errors import QueryError
from lakehouse.ops.query import _quote_meta, query, render
from lakehouse.storage import Storage


@pytest.fixture
def small_lake(tmp_path: Path) -> Storage:
    """A root with a partitioned gold table, a silver table and a _meta table (real Delta tables)."""
    write_deltalake(
        str(tmp_path / "gold/sales"),
        pa.table({"nation": ["FRANCE", "PERU", "FRANCE"], "revenue": [1.5, 2.0, 4.0],
                  "month": [dt.date(1995, 1, 1), dt.date(1995, 1, 1), dt.date(1995, 2, 1)]}),
        partition_by=["month"],
    )
    write_deltalake(str(tmp_path / "silver/nation"), pa.table({"n_nationkey": [6, 17], "n_name": ["FRANCE", "PERU"]}))
    write_deltalake(str(tmp_path / "_meta/runs"), pa.table({"run_id": ["r1", "r1"], "table_name": ["a", "b"]}))
    (tmp_path / "gold/not_a_table").mkdir()
    return Storage(str(tmp_path))


@pytest.mark.parametrize(
    ("sql", "quoted"),
    [
        ("SELECT * FROM _meta.runs", 'SELECT * FROM "_meta".runs'),
        ('SELECT * FROM "_meta".runs', 'SELECT * FROM "_meta".runs'),
        ("select * from _meta.runs r join _meta.metrics m on true",
         'select * from "_meta".runs r join "_meta".metrics m on true'),
        ("SELECT x_meta.a FROM t AS x_meta", "SELECT x_meta.a FROM t AS x_meta"),
        ("SELECT * FROM gold.sales", "SELECT * FROM gold.sales"),
        ("SELECT count(*) FROM (_meta.runs)", 'SELECT count(*) FROM ("_meta".runs)'),
    ],
)
def test_quote_meta(sql: str, quoted: str) -> None:
    assert _quote_meta(sql) == quoted


def test_quote_meta_leaves_string_literals_alone() -> None:
    assert _quote_meta("SELECT * FROM _meta.runs WHERE message = 'see _meta.runs'") == (
        "SELECT * FROM \"_meta\".runs WHERE message = 'see _meta.runs'"
    )


def test_query_joins_tables_of_different_layers(small_lake: Storage) -> None:
    result = query(
        small_lake,
        "SELECT s.month, n.n_nationkey, sum(s.revenue) AS revenue FROM gold.sales s "
        "JOIN silver.nation n ON n.n_name = s.nation GROUP BY ALL ORDER BY ALL",
    )
    assert result.to_pylist() == [
        {"month": dt.date(1995, 1, 1), "n_nationkey": 6, "revenue": 1.5},
        {"month": dt.date(1995, 1, 1), "n_nationkey": 17, "revenue": 2.0},
        {"month": dt.date(1995, 2, 1), "n_nationkey": 6, "revenue": 4.0},
    ]
    assert result.schema.field("month").type == pa.date32()


def test_query_meta_unquoted(small_lake: Storage) -> None:
    assert query(small_lake, "SELECT count(*) AS n FROM _meta.runs WHERE run_id = 'r1'").to_pylist() == [{"n": 2}]


def test_unknown_table_lists_the_known_ones(small_lake: Storage) -> None:
    with pytest.raises(QueryError) as info:
        query(small_lake, "SELECT * FROM gold.nope")
    assert "_meta.runs, gold.sales, silver.nation" in str(info.value)
    assert "not_a_table" not in str(info.value)


def test_bad_sql_is_a_query_error(small_lake: Storage) -> None:
    with pytest.raises(QueryError, match="syntax error"):
        query(small_lake, "SELEC 1")


def test_render_formats() -> None:
    result = pa.table({"a": [1, 2], "b": ["x", None]})
    assert render(result, "csv").splitlines() == ['"a","b"', '1,"x"', "2,"]
    assert render(result, "json").splitlines() == ['{"a": 1, "b": "x"}', '{"a": 2, "b": null}']
    table = render(result, "table")
    assert "shape: (2, 2)" in table and "x" in table

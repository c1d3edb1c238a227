"""The gold tables' exact semantics as DuckDB SQL over the raw CSV files: the oracle the pipeline is checked against."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl

SQL = {
    "revenue_by_nation_month": """
        SELECT date_trunc('month', o.o_orderdate)::DATE AS order_month, n.n_name AS nation,
               sum(l.l_extendedprice * (1 - l.l_discount)) AS revenue,
               count(DISTINCT o.o_orderkey) AS order_count, count(*) AS lineitem_count
        FROM orders o JOIN lineitem l ON l.l_orderkey = o.o_orderkey
        LEFT JOIN customer c ON c.c_custkey = o.o_custkey LEFT JOIN nation n ON n.n_nationkey = c.c_nationkey
        GROUP BY ALL ORDER BY order_month, nation""",
    "customer_lifetime_value": """
        SELECT c.c_custkey, c.c_name, n.n_name AS nation, count(*) AS order_count,
               sum(o.o_totalprice) AS total_spent, min(o.o_orderdate) AS first_order_date,
               max(o.o_orderdate) AS last_order_date
        FROM orders o JOIN customer c ON c.c_custkey = o.o_custkey JOIN nation n ON n.n_nationkey = c.c_nationkey
        GROUP BY ALL ORDER BY c_custkey""",
    "pricing_summary_monthly": """
        SELECT date_trunc('month', l_shipdate)::DATE AS ship_month, l_returnflag, l_linestatus,
               sum(l_quantity) AS sum_qty, sum(l_extendedprice) AS sum_base_price,
               sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price,
               sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge,
               avg(l_quantity) AS avg_qty, avg(l_extendedprice) AS avg_price, avg(l_discount) AS avg_disc,
               count(*) AS count_order
        FROM lineitem GROUP BY ALL ORDER BY ship_month, l_returnflag, l_linestatus""",
}
SORT = {
    "revenue_by_nation_month": ["order_month", "nation"],
    "customer_lifetime_value": ["c_custkey"],
    "pricing_summary_monthly": ["ship_month", "l_returnflag", "l_linestatus"],
}
TYPES = {
    "o_orderdate": "DATE", "l_shipdate": "DATE", "o_totalprice": "DOUBLE", "l_extendedprice": "DOUBLE",
    "l_discount": "DOUBLE", "l_quantity": "DOUBLE", "l_tax": "DOUBLE", "o_orderkey": "BIGINT", "o_custkey": "BIGINT",
    "l_orderkey": "BIGINT", "c_custkey": "BIGINT", "c_nationkey": "BIGINT", "n_nationkey": "BIGINT",
}


def expected(raw: Path, table: str) -> pl.DataFrame:
    """Gold ``table`` computed by DuckDB straight from the CSV files under ``raw`` (``raw/<source>/**/*.csv``)."""
    con = duckdb.connect()
    for source in ("orders", "lineitem", "customer", "nation"):
        files = sorted(str(p) for p in (raw / source).rglob("*.csv"))
        types = ", ".join(f"'{k}': '{v}'" for k, v in TYPES.items() if k.split("_")[0][0] == source[0])
        options = f"header=true, all_varchar=true, types={{{types}}}"
        con.execute(f"CREATE VIEW {source} AS SELECT * FROM read_csv({files!r}, {options})")
    return con.sql(SQL[table]).pl()


def assert_frames_match(actual: pl.DataFrame, wanted: pl.DataFrame, keys: list[str]) -> None:
    """Same rows and columns; floats equal to 1e-9 relative (sums in a different order round differently)."""
    from polars.testing import assert_frame_equal

    actual = actual.select(wanted.columns).sort(keys)
    wanted = wanted.sort(keys)
    assert actual.height == wanted.height, f"{actual.height} rows, expected {wanted.height}"
    assert_frame_equal(actual, wanted, check_dtypes=False, rel_tol=1e-9, abs_tol=1e-6)

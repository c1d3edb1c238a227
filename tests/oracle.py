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


# --- the events example -------------------------------------------------------------------------------------------

EVENTS_SQL = {
    "daily_country": """
        SELECT e.event_day, u.country, count(DISTINCT e.user_id) AS active_users, count(*) AS events,
               count(*) FILTER (WHERE e.event_type = 'purchase') AS purchases,
               coalesce(sum(e.amount) FILTER (WHERE e.event_type = 'purchase'), 0) AS revenue
        FROM events e LEFT JOIN users u USING (user_id) GROUP BY ALL""",
    "category_revenue_daily": """
        SELECT e.event_day, p.category, count(*) AS purchases, count(DISTINCT e.user_id) AS buyers,
               coalesce(sum(e.amount), 0) AS revenue
        FROM events e LEFT JOIN products p USING (product_id) WHERE e.event_type = 'purchase' GROUP BY ALL""",
    "user_totals": """
        SELECT user_id, count(*) AS events, count(DISTINCT session_id) AS sessions,
               count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
               coalesce(sum(amount) FILTER (WHERE event_type = 'purchase'), 0) AS spent,
               min(ts) AS first_seen, max(ts) AS last_seen
        FROM events GROUP BY ALL""",
}
EVENTS_SORT = {
    "daily_country": ["event_day", "country"],
    "category_revenue_daily": ["event_day", "category"],
    "user_totals": ["user_id"],
}


def expected_events(raw: Path, table: str) -> pl.DataFrame:
    """Gold ``table`` of the events example computed by DuckDB from the landed files (NDJSON, CSV, Parquet); an
    event landed twice counts once (the later landed file's copy, as silver keeps)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    files = sorted(str(p) for p in (raw / "events").rglob("*.ndjson"))
    columns = ("{event_id: 'VARCHAR', ts: 'VARCHAR', user_id: 'BIGINT', session_id: 'VARCHAR', "
               "event_type: 'VARCHAR', product_id: 'BIGINT', amount: 'DOUBLE'}")
    con.execute(f"""CREATE VIEW events AS
        SELECT * EXCLUDE (filename, ts), ts::TIMESTAMPTZ AS ts, ts::TIMESTAMPTZ::DATE AS event_day
        FROM read_json({files!r}, format = 'newline_delimited', columns = {columns}, filename = true)
        QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY filename DESC) = 1""")
    users = sorted(str(p) for p in (raw / "users").rglob("*.csv"))
    con.execute(f"CREATE VIEW users AS SELECT * FROM read_csv({users!r}, header = true)")
    products = sorted(str(p) for p in (raw / "products").rglob("*.parquet"))
    con.execute(f"CREATE VIEW products AS SELECT * FROM read_parquet({products!r})")
    return con.sql(EVENTS_SQL[table]).pl()

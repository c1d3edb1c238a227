"""The TPC-H pipeline: five sources, their silver tables, and three gold tables.

Gold semantics (the tests check them against DuckDB SQL run on the raw CSV):

* ``revenue_by_nation_month``: per (order month, customer nation): revenue = sum(l_extendedprice * (1 - l_discount)),
  order_count = distinct orders, lineitem_count = lines; over orders ⋈ lineitem, with the customer's nation. Every
  order's revenue is counted, so the table reconciles with silver: a customer deleted by change data capture keeps
  the nation of their last version in ``silver.customer_history``, and an order of a customer never seen is counted
  under a null nation (the ``references`` check reports such orders).
* ``customer_lifetime_value``: per current customer with an order: order count, sum of o_totalprice, first and last
  order. A deleted customer leaves it.
* ``pricing_summary_monthly``: TPC-H Q1's aggregates per (ship month, return flag, line status).

How they run, with no hash shuffle: the orders of the affected months, enriched with their customer's nation (nation
is tiny; customers are read filtered to the batch's keys), are broadcast through the object store in batches of whole
months of at most ``Settings.broadcast_max_rows`` rows, and joined to lineitem inside ``map_batches`` with per-block
partial aggregates finished in one combine step per batch. Customer lifetime value aggregates orders per block and
finishes in one step. The Q1 summary is partition-aligned with ``silver.lineitem`` (both by ship month), one task
per month.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import pyarrow as pa

from lakehouse import engine, gold, silver, table
from lakehouse.context import RunContext, StageResult
from lakehouse.frames import read_files, to_frame, write_frame
from lakehouse.spec import CdcSpec, GoldSpec, MonthPartition, Pipeline, SilverSpec
from lakehouse.storage import Storage
from schemas import tpch as models

SOURCES = ("region", "nation", "customer", "orders", "lineitem", "customer_cdc")

SILVER = (
    SilverSpec("region", "region", models.Region, keys=("r_regionkey",)),
    SilverSpec("nation", "nation", models.Nation, keys=("n_nationkey",)),
    SilverSpec("customer", "customer", models.Customer, keys=("c_custkey",)),
    SilverSpec("orders", "orders", models.Orders, keys=("o_orderkey",),
               partition=MonthPartition("order_month", "o_orderdate")),
    SilverSpec("lineitem", "lineitem", models.Lineitem, keys=("l_orderkey", "l_linenumber"),
               partition=MonthPartition("ship_month", "l_shipdate")),
)

REVENUE_SCHEMA = pa.schema([
    ("nation", pa.string()), ("revenue", pa.float64()), ("order_count", pa.int64()),
    ("lineitem_count", pa.int64()), ("order_month", pa.date32()),
])
CLV_SCHEMA = pa.schema([
    ("c_custkey", pa.int64()), ("c_name", pa.string()), ("nation", pa.string()), ("order_count", pa.int64()),
    ("total_spent", pa.float64()), ("first_order_date", pa.date32()), ("last_order_date", pa.date32()),
])
PRICING_SCHEMA = pa.schema([
    ("l_returnflag", pa.string()), ("l_linestatus", pa.string()), ("sum_qty", pa.float64()),
    ("sum_base_price", pa.float64()), ("sum_disc_price", pa.float64()), ("sum_charge", pa.float64()),
    ("avg_qty", pa.float64()), ("avg_price", pa.float64()), ("avg_disc", pa.float64()),
    ("count_order", pa.int64()), ("ship_month", pa.date32()),
])
ORDERS_PARTS: dict[str, Any] = {"order_month": pl.Date}
Parts = set[tuple[str | None, ...]] | None


# --- revenue_by_nation_month -------------------------------------------------------------------------------------


def build_revenue(ctx: RunContext, spec: GoldSpec) -> StageResult:
    result = StageResult(table=str(gold.ref(spec.name)))
    ins = gold.inputs(ctx, spec)
    if not any(i.changed for i in ins.values()):
        return gold.up_to_date(ctx, spec, result, ins)
    storage = ctx.storage
    base = table.snapshot(storage, gold.ref(spec.name))
    orders, lineitem = ins["orders"], ins["lineitem"]
    months: Parts = None
    # a new history version that only records a watermark (no file changed) changes no customer's last version
    history = ins["customer_history"]
    history_changed = history.changed and history.changed_partitions(storage) != set()
    if base.exists and not (ins["customer"].changed or ins["nation"].changed or history_changed):
        months = orders.changed_partitions(storage) or set()
        changed_lines = lineitem.changed_partitions(storage)
        if changed_lines is None:
            months = None
        elif changed_lines:
            months |= _order_months_of_lines(storage, orders, lineitem.file_items(changed_lines))
    removes = base.files_in(months)
    result.rows_in = sum(f.rows for f in orders.snap.files_in(months)) + sum(f.rows for f in lineitem.snap.files)
    meta: list[dict[str, Any]] = []
    kwargs = {"storage": storage, "rel": gold.ref(spec.name).rel, "run_id": ctx.run_id,
              "max_rows": ctx.settings.target_file_rows}
    customers, nations, deleted = ins["customer"].file_items(), ins["nation"].file_items(), history.file_items()
    for batch in _month_batches(orders.snap.files_in(months), ctx.settings.broadcast_max_rows):
        if not lineitem.snap.files:
            break
        # The orders of a batch of months, with their customer's nation, are the broadcast side of the join.
        selected = engine.broadcast(_orders_with_nation, storage, batch, customers, nations, deleted)
        partials = engine.run_tasks(
            lineitem.file_items(), _revenue_partial, fn_kwargs={"storage": storage, "orders": selected}
        )
        meta += engine.collect(engine.combine(partials, _revenue_final, fn_kwargs=kwargs))
    return gold.commit(ctx, spec, result, schema=REVENUE_SCHEMA, meta=meta, removes=removes, base=base, ins=ins)


def _month_batches(files: list[table.TableFile], max_rows: int) -> list[list[dict[str, Any]]]:
    """Whole months of order files packed into batches of at most ``max_rows`` rows (a bigger month alone).

    Each batch is broadcast to every lineitem task, so this bounds worker memory whatever the table's size; months
    never straddle batches, so each gold partition is computed by exactly one batch.
    """
    by_month: dict[str | None, list[table.TableFile]] = {}
    for f in files:
        by_month.setdefault(f.partition_values.get("order_month"), []).append(f)
    batches: list[list[dict[str, Any]]] = []
    rows = max_rows
    for _, month_files in sorted(by_month.items(), key=lambda kv: kv[0] or ""):
        n = sum(f.rows for f in month_files)
        if rows + n > max_rows:
            batches.append([])
            rows = 0
        batches[-1].extend(f.item() for f in month_files)
        rows += n
    return batches


def _order_months_of_lines(storage: Storage, orders: gold.Input, line_files: list[dict[str, Any]]) -> set[Any]:
    """Order months of the orders that lines in ``line_files`` belong to."""
    keys = engine.broadcast(_distinct_line_orders, storage, line_files)
    found = engine.collect(
        engine.run_tasks(orders.file_items(), _months_of_orders, fn_kwargs={"storage": storage, "keys": keys})
    )
    return {(row["order_month"],) for row in found if row["order_month"]}


def _distinct_line_orders(storage: Storage, files: list[dict[str, Any]]) -> pl.Series:
    df = read_files(storage, silver.ref("lineitem").rel, files, columns=["l_orderkey"])
    return df.get_column("l_orderkey").unique() if df.height else pl.Series("l_orderkey", [], pl.Int64)


def _months_of_orders(item: dict[str, Any], *, storage: Storage, keys: Any) -> pa.Table:
    wanted = engine.fetch(keys)
    month = item["partition_values"]["order_month"]
    df = read_files(storage, silver.ref("orders").rel, [item], columns=["o_orderkey"])
    hit = df.height and df.get_column("o_orderkey").is_in(wanted.implode()).any()
    return pa.table({"order_month": [month if hit else None]}, schema=pa.schema([("order_month", pa.string())]))


def _customer_nations(
    storage: Storage, customers: list[dict[str, Any]], nations: list[dict[str, Any]], keys: pl.Series | None = None,
    history: list[dict[str, Any]] | None = None,
) -> pl.DataFrame:
    """``c_custkey, c_name, nation``; only the customers in ``keys`` when given (a semi-join while reading). With
    ``history`` (files of silver.customer_history), deleted customers too, as their last version."""
    columns = ["c_custkey", "c_name", "c_nationkey"]
    c = read_files(storage, silver.ref("customer").rel, customers, columns=columns)
    n = read_files(storage, silver.ref("nation").rel, nations, columns=["n_nationkey", "n_name"])
    if keys is not None:
        c = c.filter(pl.col("c_custkey").is_in(keys.implode()))
    if history:
        # a deleted customer's last version is one a delete closed (the latest such, if deleted more than once); the
        # history is read a file at a time, keeping only those versions
        closed = []
        for f in history:
            h = read_files(storage, silver.ref("customer_history").rel, [f], columns=[*columns, "_end_op", "_lsn"])
            h = h.filter(pl.col("_end_op") == "d")
            closed.append(h if keys is None else h.filter(pl.col("c_custkey").is_in(keys.implode())))
        last = pl.concat(closed, how="vertical_relaxed").sort("_lsn").unique("c_custkey", keep="last",
                                                                             maintain_order=True)
        gone = last.select(columns).join(c.select("c_custkey"), on="c_custkey", how="anti")
        c = pl.concat([c, gone], how="vertical_relaxed")
    if not c.height or not n.height:
        return pl.DataFrame(schema={"c_custkey": pl.Int64, "c_name": pl.String, "nation": pl.String})
    joined = c.join(n, left_on="c_nationkey", right_on="n_nationkey", how="inner")
    return joined.select("c_custkey", "c_name", pl.col("n_name").alias("nation"))


def _orders_with_nation(
    storage: Storage, files: list[dict[str, Any]], customers: list[dict[str, Any]], nations: list[dict[str, Any]],
    history: list[dict[str, Any]],
) -> pl.DataFrame:
    """The orders in ``files`` with their customer's nation (null when no customer, current or deleted, is known)."""
    cols = ["o_orderkey", "o_custkey", "order_month"]
    o = read_files(storage, silver.ref("orders").rel, files, columns=cols, partition_types=ORDERS_PARTS)
    if not o.height:
        return pl.DataFrame(schema={"o_orderkey": pl.Int64, "order_month": pl.Date, "nation": pl.String})
    lookup = _customer_nations(storage, customers, nations, keys=o.get_column("o_custkey").unique(), history=history)
    joined = o.join(lookup, left_on="o_custkey", right_on="c_custkey", how="left")
    return joined.select("o_orderkey", "order_month", "nation")


def _revenue_partial(item: dict[str, Any], *, storage: Storage, orders: Any) -> pa.Table:
    selected: pl.DataFrame = engine.fetch(orders)
    cols = ["l_orderkey", "l_extendedprice", "l_discount"]
    li = read_files(storage, silver.ref("lineitem").rel, [item], columns=cols)
    joined = li.join(selected, left_on="l_orderkey", right_on="o_orderkey", how="inner")
    partial = joined.group_by("order_month", "nation", "l_orderkey").agg(
        (pl.col("l_extendedprice") * (1 - pl.col("l_discount"))).sum().alias("revenue"),
        pl.len().cast(pl.Int64).alias("lines"),
    )
    schema = pa.schema([("order_month", pa.date32()), ("nation", pa.string()), ("l_orderkey", pa.int64()),
                        ("revenue", pa.float64()), ("lines", pa.int64())])
    return partial.to_arrow().cast(schema)


def _revenue_final(partials: pa.Table, *, storage: Storage, rel: str, run_id: str, max_rows: int) -> pa.Table:
    df = to_frame(partials)
    out = df.group_by("order_month", "nation").agg(
        pl.col("revenue").sum(),
        pl.col("l_orderkey").n_unique().cast(pl.Int64).alias("order_count"),
        pl.col("lines").sum().alias("lineitem_count"),
    )
    return _write_by_month(storage, rel, out, REVENUE_SCHEMA, "order_month", run_id, max_rows)


def _write_by_month(
    storage: Storage, rel: str, df: pl.DataFrame, schema: pa.Schema, column: str, run_id: str, max_rows: int
) -> pa.Table:
    file_schema = pa.schema([f for f in schema if f.name != column])
    files = []
    for (month,), part in df.sort(df.columns).partition_by(column, as_dict=True, include_key=False).items():
        files += write_frame(storage, rel, part, file_schema, partition_values={column: month.isoformat()},
                             prefix=f"part-{run_id}", max_rows=max_rows)
    return gold.meta_table(files)


# --- customer_lifetime_value -------------------------------------------------------------------------------------


def build_customer_lifetime_value(ctx: RunContext, spec: GoldSpec) -> StageResult:
    """Rebuilt whole when any input changed: a customer's totals span every order month."""
    result = StageResult(table=str(gold.ref(spec.name)))
    ins = gold.inputs(ctx, spec)
    if not any(i.changed for i in ins.values()):
        return gold.up_to_date(ctx, spec, result, ins)
    storage = ctx.storage
    base = table.snapshot(storage, gold.ref(spec.name))
    meta: list[dict[str, Any]] = []
    result.rows_in = sum(f.rows for f in ins["orders"].snap.files)
    if ins["orders"].snap.files:
        partials = engine.run_tasks(ins["orders"].file_items(), _clv_partial, fn_kwargs={"storage": storage})
        kwargs = {"storage": storage, "rel": gold.ref(spec.name).rel, "run_id": ctx.run_id,
                  "customers": ins["customer"].file_items(), "nations": ins["nation"].file_items(),
                  "max_rows": ctx.settings.target_file_rows}
        meta = engine.collect(engine.combine(partials, _clv_final, fn_kwargs=kwargs))
    return gold.commit(ctx, spec, result, schema=CLV_SCHEMA, meta=meta, removes=list(base.files), base=base,
                       ins=ins)


def _clv_partial(item: dict[str, Any], *, storage: Storage) -> pa.Table:
    o = read_files(storage, silver.ref("orders").rel, [item], columns=["o_custkey", "o_totalprice", "o_orderdate"])
    partial = o.group_by("o_custkey").agg(
        pl.len().cast(pl.Int64).alias("order_count"),
        pl.col("o_totalprice").sum().alias("total_spent"),
        pl.col("o_orderdate").min().alias("first_order_date"),
        pl.col("o_orderdate").max().alias("last_order_date"),
    )
    schema = pa.schema([("o_custkey", pa.int64()), ("order_count", pa.int64()), ("total_spent", pa.float64()),
                        ("first_order_date", pa.date32()), ("last_order_date", pa.date32())])
    return partial.to_arrow().cast(schema)


def _clv_final(
    partials: pa.Table,
    *,
    storage: Storage,
    rel: str,
    run_id: str,
    customers: list[dict[str, Any]],
    nations: list[dict[str, Any]],
    max_rows: int,
) -> pa.Table:
    df = to_frame(partials)
    totals = df.group_by("o_custkey").agg(
        pl.col("order_count").sum(),
        pl.col("total_spent").sum(),
        pl.col("first_order_date").min(),
        pl.col("last_order_date").max(),
    )
    lookup = _customer_nations(storage, customers, nations, keys=totals.get_column("o_custkey"))
    out = totals.join(lookup, left_on="o_custkey", right_on="c_custkey", how="inner")
    out = out.rename({"o_custkey": "c_custkey"}).sort("c_custkey")
    return gold.meta_table(write_frame(storage, rel, out, CLV_SCHEMA, prefix=f"part-{run_id}", max_rows=max_rows))


# --- pricing_summary_monthly -------------------------------------------------------------------------------------


def build_pricing_summary(ctx: RunContext, spec: GoldSpec) -> StageResult:
    """Partition-aligned with silver.lineitem: one task per changed ship month, no shuffle and no combine."""
    result = StageResult(table=str(gold.ref(spec.name)))
    ins = gold.inputs(ctx, spec)
    lineitem = ins["lineitem"]
    if not lineitem.changed:
        return gold.up_to_date(ctx, spec, result, ins)
    storage = ctx.storage
    base = table.snapshot(storage, gold.ref(spec.name))
    months = lineitem.changed_partitions(storage) if base.exists else None
    by_month: dict[str, list[dict[str, Any]]] = {}
    for f in lineitem.file_items(months):
        by_month.setdefault(f["partition_values"]["ship_month"], []).append(f)
    items = [{"month": m, "files": fs} for m, fs in sorted(by_month.items())]
    result.rows_in = sum(f.rows for f in lineitem.snap.files_in(months))
    kwargs = {"storage": storage, "rel": gold.ref(spec.name).rel, "run_id": ctx.run_id}
    meta = engine.collect(engine.run_tasks(items, _pricing_month, fn_kwargs=kwargs)) if items else []
    return gold.commit(ctx, spec, result, schema=PRICING_SCHEMA, meta=meta, removes=base.files_in(months),
                       base=base, ins=ins)


def _pricing_month(item: dict[str, Any], *, storage: Storage, rel: str, run_id: str) -> pa.Table:
    cols = ["l_returnflag", "l_linestatus", "l_quantity", "l_extendedprice", "l_discount", "l_tax"]
    li = read_files(storage, silver.ref("lineitem").rel, item["files"], columns=cols)
    disc_price = pl.col("l_extendedprice") * (1 - pl.col("l_discount"))
    out = li.group_by("l_returnflag", "l_linestatus").agg(
        pl.col("l_quantity").sum().alias("sum_qty"),
        pl.col("l_extendedprice").sum().alias("sum_base_price"),
        disc_price.sum().alias("sum_disc_price"),
        (disc_price * (1 + pl.col("l_tax"))).sum().alias("sum_charge"),
        pl.col("l_quantity").mean().alias("avg_qty"),
        pl.col("l_extendedprice").mean().alias("avg_price"),
        pl.col("l_discount").mean().alias("avg_disc"),
        pl.len().cast(pl.Int64).alias("count_order"),
    ).sort("l_returnflag", "l_linestatus")
    file_schema = pa.schema([f for f in PRICING_SCHEMA if f.name != "ship_month"])
    files = write_frame(storage, rel, out, file_schema, partition_values={"ship_month": item["month"]},
                        prefix=f"part-{run_id}", max_rows=1 << 30)
    return gold.meta_table(files)


GOLD = (
    GoldSpec("revenue_by_nation_month", ("orders", "lineitem", "customer", "customer_history", "nation"), build_revenue,
             partition_column="order_month"),
    GoldSpec("customer_lifetime_value", ("orders", "customer", "nation"), build_customer_lifetime_value),
    GoldSpec("pricing_summary_monthly", ("lineitem",), build_pricing_summary, partition_column="ship_month"),
)

# Debezium change events of customers (raw/customer_cdc/), applied to silver.customer after its snapshot.
CDC = (CdcSpec("customer", "customer_cdc", "customer_history"),)
PIPELINE = Pipeline(name="tpch", sources=SOURCES, silver=SILVER, gold=GOLD, cdc=CDC)

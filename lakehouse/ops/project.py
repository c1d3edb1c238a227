"""``lakehouse init``: a runnable project in a directory of its own.

A project is a ``lakehouse.toml`` (the root, the pipelines by name, settings), one pipeline module under
``pipelines/``, its Pandera models under ``schemas/``, and a ``prefect.yaml`` with a deployment per pipeline (the
flow comes from the engine, through ``medallion_flow.py``). ``--example events`` and ``--example tpch`` start from
the engine's examples (with their demo data: ``lakehouse demo-data``); ``--example empty`` from a skeleton to fill in.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from lakehouse.errors import ConfigError

EXAMPLES = ("events", "tpch", "empty")

CONFIG = """\
# A lakehouse project: `lakehouse demo-data && lakehouse run` from this directory.
# Settings here are overridden by LAKEHOUSE_* environment variables, and those by command-line flags.
root = "lakehouse-data"
pipeline = "{name}"

[pipelines]
{name} = "pipelines/{name}.py"

[settings]
# max_quarantined_share = {{ "*" = 0.05 }}   # share of a batch's rows that may be quarantined before it fails
# lookback = {{ {table} = 7 }}               # a late row older than this many partitions waits for a backfill
# broadcast_max_rows = 2000000             # lookups of at most this many rows are broadcast to every task

[ray]
num_cpus = 2
# address = "ray://head:10001"             # an existing cluster (or RAY_ADDRESS)
"""

FLOW = '''\
"""The lakehouse flow, for this project's Prefect deployments (prefect.yaml)."""

from flows.medallion import medallion

__all__ = ["medallion"]
'''

PREFECT = """\
# Deployments of this project: with a Prefect server and a process work pool named lakehouse,
# `prefect --no-prompt deploy --all` here, then `prefect deployment run medallion/{name} --watch`.
name: {project}
prefect-version: 3.9.1
build: null
push: null
pull:
  - prefect.deployments.steps.set_working_directory:
      directory: "{directory}"
deployments:
  - name: {name}
    description: Everything landed under the project's root, to bronze, silver and gold.
    entrypoint: medallion_flow.py:medallion
    parameters:
      pipeline: {name}
    # One run at a time: runs of one pipeline commit to the same tables.
    concurrency_limit: 1
    work_pool:
      name: lakehouse
      work_queue_name: null
      job_variables: {{}}
"""

EMPTY_MODELS = '''\
"""The Pandera models of this project's tables: a silver model per source table, a model per gold table."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl


class Order(pa.DataFrameModel):
    order_id: pl.Int64 = pa.Field(ge=0)
    customer: pl.String
    ordered_on: pl.Date
    amount: pl.Float64 = pa.Field(ge=0)


class DailyRevenue(pa.DataFrameModel):
    order_day: pl.Date
    orders: pl.Int64 = pa.Field(ge=1)
    revenue: pl.Float64
'''

EMPTY_PIPELINE = '''\
"""This project's pipeline: land CSV files under lakehouse-data/raw/orders/, then `lakehouse run`."""

from __future__ import annotations

import polars as pl

from lakehouse import Gold, Pipeline, Silver, Source, day, per_partition
from schemas import empty as m


def daily_revenue(orders: pl.DataFrame) -> pl.DataFrame:
    return orders.group_by("order_day").agg(pl.len().alias("orders"), pl.col("amount").sum().alias("revenue"))


PIPELINE = Pipeline(
    "empty",
    sources=[Source("orders", format="csv")],
    silver=[Silver("orders", m.Order, keys="order_id", partition=day("ordered_on", as_="order_day"))],
    gold=[Gold("daily_revenue", m.DailyRevenue, partition="order_day", plan=per_partition("orders", daily_revenue))],
)
'''


def init(directory: str, example: str = "events") -> list[Path]:
    """Write a project into ``directory`` (created if needed; existing files are never overwritten). Returns the
    files written."""
    if example not in EXAMPLES:
        raise ConfigError(f"unknown example {example!r} (known: {', '.join(EXAMPLES)})")
    root = Path(directory).resolve()
    name = example
    if example == "empty":
        pipeline, models, table = EMPTY_PIPELINE, EMPTY_MODELS, "orders"
    else:
        pipeline = (importlib.resources.files(f"examples.{example}") / "pipeline.py").read_text()
        models = (importlib.resources.files("schemas") / f"{example}.py").read_text()
        table = {"events": "events", "tpch": "lineitem"}[example]
    files = {
        "lakehouse.toml": CONFIG.format(name=name, table=table),
        f"pipelines/{name}.py": pipeline,
        "pipelines/__init__.py": '"""This project\'s pipelines."""\n',
        f"schemas/{name}.py": models,
        "schemas/__init__.py": '"""This project\'s Pandera models."""\n',
        "medallion_flow.py": FLOW,
        "prefect.yaml": PREFECT.format(name=name, project=root.name, directory=root),
        ".gitignore": "lakehouse-data/\n.prefect/\n",
    }
    taken = [rel for rel in files if (root / rel).exists()]
    if taken:
        raise ConfigError(f"{root}: {taken[0]} already exists; init writes a new project (nothing was written)")
    written = []
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written

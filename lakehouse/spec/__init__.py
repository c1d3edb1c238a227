"""Pipeline declarations (what a user writes) and the loader that finds them."""

from lakehouse.spec.declare import Cdc, Gold, Pipeline, Silver, Source, Stage
from lakehouse.spec.loader import load
from lakehouse.spec.partition import Partitioning, day, identity, month, year
from lakehouse.spec.plans import Aggregate, Lookup, PerPartition, Plan, aggregate, lookup, per_partition

__all__ = [
    "Aggregate",
    "Cdc",
    "Gold",
    "Lookup",
    "Partitioning",
    "PerPartition",
    "Pipeline",
    "Plan",
    "Silver",
    "Source",
    "Stage",
    "aggregate",
    "day",
    "identity",
    "load",
    "lookup",
    "month",
    "per_partition",
    "year",
]

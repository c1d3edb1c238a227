"""Settings: one frozen object, built at the edge (CLI, flow entry, test fixture) and passed down.

Library code never reads the environment; :func:`settings_from_env` is the one place that does, and only the edges
call it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from lakehouse.errors import ConfigError


@dataclass(frozen=True)
class RaySettings:
    """How to reach Ray: a local instance we start, or ``address`` of a running cluster."""

    address: str | None = None
    num_cpus: int = 2
    object_store_bytes: int = 1 << 30
    temp_dir: str | None = None


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know about where data lives and how to process it.

    ``root`` is a local path or ``s3://bucket/prefix``; ``storage_options`` are the deltalake-style options
    (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...) used for every table and file on that root.
    """

    root: str
    storage_options: Mapping[str, str] = field(default_factory=dict)
    ray: RaySettings = field(default_factory=RaySettings)
    pipeline: str = "tpch"
    # Rows per Parquet file written by workers: ~1M rows keeps files in the 32-128 MB range for TPC-H.
    target_file_rows: int = 1_000_000
    # The most rows broadcast to every worker for a join (the revenue join broadcasts orders in batches of this).
    broadcast_max_rows: int = 2_000_000
    # Files no version refers to are deleted once older than this (longer than the longest run: a younger one may
    # belong to a run that has not committed yet); see maintenance.sweep.
    orphan_retention_seconds: float = 24 * 3600.0
    # Late data, per month-partitioned silver table: a landed row for a month more than N months before the table's
    # newest month goes to quarantine (check late_arrival) instead of rewriting that closed month; a backfill of the
    # month takes it in. A table not named here takes every late row (runs select work by landed file, so nothing
    # late is ever missed). N must cover the table's normal spread: TPC-H lines ship up to 4 months after the order.
    lookback_months: Mapping[str, int] = field(default_factory=dict)
    # A landed file that cannot be read at all (corrupt, empty, binary, an unclosed quote): "reject" records it in
    # _meta.rejected_files and goes on with the rest; "fail" fails the run naming the file, committing nothing.
    bad_files: Literal["reject", "fail"] = "reject"
    # Schema drift, per source: a landed file with a column the table does not have fails the run naming the file and
    # the column ("fail", the default), or "evolve" adds it to bronze and silver (null for earlier rows), as dbt's
    # append_new_columns. A file missing one of the table's columns always fails.
    new_columns: Mapping[str, Literal["evolve", "fail"]] = field(default_factory=dict)
    # Quality gate, per silver table ("*" for every table): the largest share of a batch's rows that may go to
    # quarantine; above it the run fails before the table commits. A table without one has no such gate.
    max_quarantined_share: Mapping[str, float] = field(default_factory=dict)
    # More gates, per silver table ("*" for every table), over the model's own (see lakehouse.checks.Gates): the range
    # of valid rows an incremental batch may bring (None: unbounded), the freshness SLA in days (newest event date vs
    # the run's logical date), and the tables whose source must deliver every run (no new rows fails empty_batch).
    batch_rows: Mapping[str, tuple[int | None, int | None]] = field(default_factory=dict)
    freshness_days: Mapping[str, float] = field(default_factory=dict)
    expect_delivery: tuple[str, ...] = ()
    # Ingest lag, per source ("*" for every source): the longest a landed file may wait for ingest (seconds, measured
    # at the start of a run) before the ingest_lag check fails.
    max_ingest_lag_seconds: Mapping[str, float] = field(default_factory=dict)
    # A check's action other than its default (lakehouse.checks.DEFAULT_ACTIONS): "freshness" or "orders.freshness"
    # -> "fail" or "warn".
    check_actions: Mapping[str, Literal["warn", "fail"]] = field(default_factory=dict)

    def with_root(self, root: str) -> Settings:
        return replace(self, root=root)

    def __hash__(self) -> int:
        return hash((self.root, tuple(sorted(self.storage_options.items())), self.ray, self.pipeline))


_S3_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ALLOW_HTTP")


def settings_from_env(root: str | None = None, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from ``LAKEHOUSE_*``, ``RAY_ADDRESS`` and ``AWS_*`` variables; edges only."""
    env = os.environ if env is None else env
    root = root or env.get("LAKEHOUSE_ROOT") or "lakehouse-data"
    if "://" not in root:
        root = os.path.abspath(root)
    storage = {k: env[k] for k in _S3_KEYS if k in env} if root.startswith("s3://") else {}
    ray = RaySettings(
        address=env.get("RAY_ADDRESS") or None,
        num_cpus=int(env.get("LAKEHOUSE_RAY_CPUS", "2")),
        object_store_bytes=int(env.get("LAKEHOUSE_RAY_OBJECT_STORE_BYTES", str(1 << 30))),
        temp_dir=env.get("LAKEHOUSE_RAY_TEMP_DIR") or None,
    )
    if env.get("LAKEHOUSE_BAD_FILES"):
        policy = env["LAKEHOUSE_BAD_FILES"]
        if policy not in ("reject", "fail"):
            raise ConfigError(f"LAKEHOUSE_BAD_FILES must be reject or fail, not {policy!r}")
        overrides.setdefault("bad_files", policy)
    if env.get("LAKEHOUSE_LOOKBACK_MONTHS"):  # "orders=2,lineitem=6"
        months = _pairs("LAKEHOUSE_LOOKBACK_MONTHS", env["LAKEHOUSE_LOOKBACK_MONTHS"], lambda v: v.isdigit())
        overrides.setdefault("lookback_months", {k: int(v) for k, v in months.items()})
    if env.get("LAKEHOUSE_MAX_QUARANTINED_SHARE"):  # "orders=0.01" or "*=0.01"
        shares = _pairs("LAKEHOUSE_MAX_QUARANTINED_SHARE", env["LAKEHOUSE_MAX_QUARANTINED_SHARE"], _is_share)
        overrides.setdefault("max_quarantined_share", {k: float(v) for k, v in shares.items()})
    if env.get("LAKEHOUSE_BATCH_ROWS"):  # "orders=1..500000,lineitem=1.."
        ranges = _pairs("LAKEHOUSE_BATCH_ROWS", env["LAKEHOUSE_BATCH_ROWS"], _is_range)
        overrides.setdefault("batch_rows", {k: _range(v) for k, v in ranges.items()})
    if env.get("LAKEHOUSE_FRESHNESS_DAYS"):  # "orders=2"
        days = _pairs("LAKEHOUSE_FRESHNESS_DAYS", env["LAKEHOUSE_FRESHNESS_DAYS"], _is_number)
        overrides.setdefault("freshness_days", {k: float(v) for k, v in days.items()})
    if env.get("LAKEHOUSE_EXPECT_DELIVERY"):  # "orders,lineitem"
        overrides.setdefault("expect_delivery", tuple(t.strip() for t in env["LAKEHOUSE_EXPECT_DELIVERY"].split(",")
                                                      if t.strip()))
    if env.get("LAKEHOUSE_MAX_INGEST_LAG_SECONDS"):  # "*=3600"
        lag = _pairs("LAKEHOUSE_MAX_INGEST_LAG_SECONDS", env["LAKEHOUSE_MAX_INGEST_LAG_SECONDS"], _is_number)
        overrides.setdefault("max_ingest_lag_seconds", {k: float(v) for k, v in lag.items()})
    if env.get("LAKEHOUSE_CHECK_ACTIONS"):  # "orders.freshness=fail,references=fail"
        actions = _pairs("LAKEHOUSE_CHECK_ACTIONS", env["LAKEHOUSE_CHECK_ACTIONS"], lambda v: v in ("warn", "fail"))
        overrides.setdefault("check_actions", actions)
    if env.get("LAKEHOUSE_NEW_COLUMNS"):  # "orders=evolve"
        policies = _pairs("LAKEHOUSE_NEW_COLUMNS", env["LAKEHOUSE_NEW_COLUMNS"], lambda v: v in ("evolve", "fail"))
        overrides.setdefault("new_columns", policies)
    return Settings(root=root, storage_options=storage, ray=ray, **overrides)


def _pairs(name: str, text: str, valid: Callable[[str], bool]) -> dict[str, str]:
    """``table=value,table=value`` from an environment variable."""
    found = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        key, _, value = (part.strip() for part in entry.partition("="))
        if not key or not valid(value):
            raise ConfigError(f"{name}: cannot read {entry!r} (expected table=value, e.g. orders=2)")
        found[key] = value
    return found


def _is_number(text: str) -> bool:
    try:
        return float(text) >= 0
    except ValueError:
        return False


def _is_range(text: str) -> bool:
    low, sep, high = text.partition("..")
    return bool(sep) and all(not p or p.isdigit() for p in (low, high))


def _range(text: str) -> tuple[int | None, int | None]:
    low, _, high = text.partition("..")
    return (int(low) if low else None, int(high) if high else None)


def _is_share(text: str) -> bool:
    try:
        return 0.0 <= float(text) <= 1.0
    except ValueError:
        return False

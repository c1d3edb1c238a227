"""The silver table's checks on a batch, before its commit: warnings, the quarantined share, row count, orphans,
freshness and drift (see :mod:`lakehouse.quality.checks`). Orphans and drift profiles are computed on workers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import polars as pl

from lakehouse import engine, table
from lakehouse.quality import checks, quarantine
from lakehouse.quality.validation import model_dtypes
from lakehouse.running.context import RunContext
from lakehouse.silver.reports import Finding, Merged, Orphans, Profiled, Quarantined, Read, Report, Staged, plain
from lakehouse.silver.tables import ref
from lakehouse.spec import Silver as SilverSpec
from lakehouse.storage import Storage
from lakehouse.storage.files import DataFile
from lakehouse.storage.frames import read_files
from lakehouse.table import TableFile, TableRef


def gate_checks(
    ctx: RunContext,
    spec: SilverSpec,
    gate: checks.Gates,
    base: table.Snapshot,
    staged: list[Report],
    staging: str,
    merged: list[Merged],
    adds: list[DataFile],
    replaced: list[TableFile],
) -> list[checks.CheckResult]:
    """The table's checks on this batch, before its commit (see :mod:`lakehouse.quality.checks`).

    About the batch (incremental runs and full refreshes; a backfill's rows were checked when they landed): rows kept
    with warnings, the quarantined share, the batch's row count and its orphans (new rows whose reference has no
    parent row). About the table as this batch leaves it: freshness, and drift of each written month against the one
    before.
    """
    out: list[checks.CheckResult] = []
    table_name = str(ref(spec.name))
    batch = ctx.months is None
    if batch:
        for (check, column), found in _findings(staged, "warn").items():
            out.append(checks.warned(table_name, check, column, found["n"], found))
        quarantined = sum(m.file.rows for m in staged if isinstance(m, Quarantined))
        rows_in = sum(m.rows for m in staged if isinstance(m, Read))
        late = sum(m.late for m in staged if isinstance(m, Quarantined))
        if gate.max_quarantined_share is not None:
            reasons = [f for (c, _), f in _findings(staged, "reject").items() if not c.startswith(quarantine.LATE)]
            worst = max(reasons, key=lambda f: f["n"], default=None)
            out.append(checks.quarantined_share(gate, rows_in, quarantined - late, gate.max_quarantined_share, worst))
        valid = rows_in - quarantined
        if gate.batch_rows is not None and not ctx.full_refresh:
            out.append(checks.batch_rows(gate, valid))
        if gate.expect_delivery and not ctx.full_refresh and valid == 0:
            out.append(checks.empty_batch(gate, f"{rows_in} rows landed, none valid"))
    new_rows = [m.file for m in staged if isinstance(m, Staged) and not m.keys_only]
    for column, (parent, key) in gate.references.items():
        found = _orphans(ctx, new_rows, staging, column, ref(parent), key)
        out.append(checks.references(gate, column, parent, key, found))
    gone = {r.path for r in replaced}
    kept = [f for f in base.files if f.path not in gone]
    timed = spec.partition is not None and spec.partition.time
    if gate.freshness_days is not None and timed and batch:  # a backfill rebuilds the past on purpose
        out.append(freshness(ctx, spec, gate, kept, adds))
    if gate.drift and timed:
        out += checks.drift(gate, _drift_pairs(ctx, spec, merged, kept))
    return out


def freshness(
    ctx: RunContext, spec: SilverSpec, gate: checks.Gates, kept: list[TableFile], adds: list[DataFile]
) -> checks.CheckResult:
    """The freshness check from the log's statistics alone: the newest event date of the files the table will hold
    (a file without statistics of it, as files with timestamps were before they had them: the first day of its
    partition)."""
    assert spec.partition
    column, part = spec.partition.source_column, spec.partition.column
    newest = [str(v)[:10] for f in kept if (v := f.maxs.get(column) or f.partition_values.get(part)) is not None]
    newest += [str(v)[:10] for f in adds
               if (v := json.loads(f.stats).get("maxValues", {}).get(column) or f.partition_values.get(part))]
    return checks.freshness(gate, dt.date.fromisoformat(max(newest)) if newest else None, ctx.as_of)


def _findings(staged: list[Report], kind: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Workers' findings of ``kind`` summed over files, per (check, column), with the first file's example."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for m in staged:
        if isinstance(m, Finding) and m.kind == kind:
            f = dataclasses.asdict(m)
            key = (m.check, m.column)
            if key in found:
                found[key]["n"] += f["n"]
            else:
                found[key] = f
    return found


def drift_measures(spec: SilverSpec) -> list[str]:
    """The columns whose mean and quantiles drift is measured on: the model's floating-point measures (keys and
    counters move by design)."""
    return [c for c, t in model_dtypes(spec.model).items() if t == pl.Float64]


def _drift_pairs(
    ctx: RunContext, spec: SilverSpec, merged: list[Merged], kept: list[TableFile]
) -> list[tuple[str, dict[str, Any], str, dict[str, Any]]]:
    """(month, profile, previous month, profile) for each month written this batch whose previous month has rows:
    written too, or profiled from its current files on a worker."""
    assert spec.partition
    column = spec.partition.column
    written = {m.partition: m.profile for m in merged if m.partition is not None and m.profile is not None}
    wanted = {spec.partition.shift(month, -1) for month in written} - set(written)
    by_month: dict[str, list[dict[str, Any]]] = {}
    for f in kept:
        month = f.partition_values.get(column)
        if month in wanted:
            by_month.setdefault(month, []).append(f.item())
    items = [{"month": month, "files": files} for month, files in by_month.items()]
    kwargs = {"storage": ctx.storage, "rel": ref(spec.name).rel, "measures": drift_measures(spec)}
    profiles = dict(written)
    found: list[Profiled] = engine.map_items(items, profile_month, fn_kwargs=kwargs)
    profiles |= {m.partition: m.profile for m in found}
    return [(month, written[month], prev, profiles[prev]) for month in sorted(written)
            if (prev := spec.partition.shift(month, -1)) in profiles and profiles[prev]["rows"]]


def _orphans(
    ctx: RunContext, rows: list[DataFile], staging: str, column: str, parent: TableRef, key: str
) -> dict[str, Any]:
    """The batch's rows (staged files) whose ``column`` matches no ``key`` of ``parent``: how many, of how many, and
    the smallest five such values.

    On workers, never a whole table in one process: the batch's distinct values (in hash buckets of at most
    4 x ``broadcast_max_rows`` rows, one round per bucket) are broadcast, each parent file reports which of them it
    holds (its hits stay in the object store), and one more task counts the rest."""
    total: dict[str, Any] = {"orphans": 0, "checked": 0, "sample": []}
    if not rows:
        return total
    storage = ctx.storage
    parent_files = [f.item() for f in table.snapshot(storage, parent).files] or [{"path": None}]
    items = [{"path": f.path, "partition_values": f.partition_values} for f in rows]
    buckets = max(1, -(-sum(f.rows for f in rows) // (4 * ctx.settings.broadcast_max_rows)))
    for bucket in range(buckets):
        keys = engine.broadcast(_child_keys, storage, staging, items, column, bucket, buckets)
        [found] = engine.map_reduce(parent_files, _parent_hits, _orphan_count,
                                    fn_kwargs={"storage": storage, "rel": parent.rel, "key": key, "keys": keys},
                                    reduce_kwargs={"keys": keys})
        total["orphans"] += found.orphans
        total["checked"] += found.checked
        total["sample"] = sorted(total["sample"] + list(found.sample))[:5]
    return total


def _child_keys(
    storage: Storage, staging: str, items: list[dict[str, Any]], column: str, bucket: int, buckets: int
) -> pl.DataFrame:
    """The distinct non-null values of ``column`` in one hash bucket of the staged rows, and how many rows hold each."""
    values = read_files(storage, staging, items, columns=[column]).get_column(column).drop_nulls()
    if buckets > 1:
        values = values.filter(values.hash(seed=0) % buckets == bucket)
    return values.value_counts(name="__n").rename({column: "__value"})


def _parent_hits(item: dict[str, Any], *, storage: Storage, rel: str, key: str, keys: Any) -> list[pl.DataFrame]:
    """Which of the broadcast values this parent file holds."""
    wanted: pl.DataFrame = engine.fetch(keys)
    if item["path"] is None:  # no parent table (yet): nothing is found
        return []
    own = read_files(storage, rel, [item], columns=[key]).get_column(key).unique()
    return [wanted.select("__value").join(own.cast(wanted.schema["__value"]).rename("__value").to_frame(),
                                          on="__value", how="semi")]


def _orphan_count(found: list[pl.DataFrame], *, keys: Any) -> list[Orphans]:
    """The broadcast values no parent file holds: rows, distinct values and a sample."""
    wanted: pl.DataFrame = engine.fetch(keys)
    hits = pl.concat(found).unique() if found else wanted.select("__value").clear()
    missing = wanted.join(hits, on="__value", how="anti")
    sample = tuple(plain(v) for v in missing.get_column("__value").sort().head(5).to_list())
    return [Orphans(int(missing.get_column("__n").sum()), int(wanted.get_column("__n").sum()), sample)]


def profile_month(item: dict[str, Any], *, storage: Storage, rel: str, measures: list[str]) -> list[Profiled]:
    """The drift profile of one month's current files."""
    df = read_files(storage, rel, item["files"])
    return [Profiled(item["month"], checks.profile(df, measures))]

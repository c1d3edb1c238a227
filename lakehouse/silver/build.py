"""Silver: typed, validated, deduplicated tables, written by partition overwrite of exactly the touched partitions.

Plan (driver): the bronze files added since the watermark (``lakehouse/silver.<table>`` app transaction = the bronze
version last processed). Execute (Ray workers), partition-aligned with no hash shuffle:

1. one task per new bronze file casts and validates it with the Pandera model, writes rejected rows to quarantine
   and stages valid rows by target partition;
2. one task per touched partition merges the staged rows with the partition's current rows, keeps the most recently
   landed row of each key (``_ingested_at``, then ``_source_file``, then ``_source_line``) and writes the partition.

Commit (driver): quarantine, then silver in one version that removes the touched partitions' old files and adds the
new ones, with the new watermark. Staged files are deleted afterwards.

A full refresh rebuilds every partition from every bronze row. A backfill (``RunContext.months``) rebuilds the
partitions of a month range the same way: rows of other months are staged only as keys and lineage, so a key whose
latest row lies outside the range stays out of it, and a partition outside it that holds an older row of a key the
range now owns loses that row; the watermark is left alone. With a lookback (``Silver.lookback``, or
``Settings.lookback``), a row for a partition older than the lookback window is quarantined (``late_arrival``)
rather than rewriting a closed one.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from lakehouse import bronze, engine, table
from lakehouse.quality import checks, quarantine
from lakehouse.quality.validation import model_metadata
from lakehouse.running.context import RunContext, StageResult
from lakehouse.silver.gates import drift_measures, freshness, gate_checks
from lakehouse.silver.reports import Merged, Quarantined, Read, Report, Staged
from lakehouse.silver.tables import (
    LINEAGE,
    app_id,
    arrow_schema,
    cdc_reset,
    files_since,
    in_months,
    in_partition,
    lookback_cutoff,
    lookback_of,
    new_columns,
    partition_key,
    ref,
)
from lakehouse.silver.tasks import merge_partition, moved_away, owners_of_staged, validate_file
from lakehouse.spec import Silver as SilverSpec
from lakehouse.storage import Storage
from lakehouse.storage.files import DataFile
from lakehouse.table import TableFile, merge


def build(ctx: RunContext, spec: SilverSpec) -> StageResult:
    """Bring ``silver.<spec.name>`` up to date with its bronze source in one commit."""
    result = StageResult(table=str(ref(spec.name)))
    storage = ctx.storage
    source = table.snapshot(storage, bronze.ref(spec.source))
    if not source.exists:
        return result.finish("skipped", f"no bronze table {bronze.ref(spec.source)}")
    assert source.version is not None
    base = table.snapshot(storage, ref(spec.name))
    result.inputs = {str(source.ref): source.version}
    result.version = base.version
    months = ctx.months
    timed = spec.partition is not None and spec.partition.time
    if months and not timed:
        return result.finish("skipped", "not partitioned by time: a backfill leaves it as it is")
    # A full refresh or a backfill rebuilds (all or some) partitions from every bronze row, not from the table.
    rebuild = ctx.full_refresh or months is not None
    gate = checks.gates(spec.name, model_metadata(spec.model), ctx.settings)
    mark = None if rebuild else table.txn_version(storage, ref(spec.name), app_id(spec.name))
    # Versions since the watermark may bring no row: a compaction of bronze files already read.
    new_files = [] if mark is not None and mark >= source.version else files_since(storage, source, mark)
    if mark is not None and not new_files:
        # Nothing new is when a stale feed shows: freshness is checked all the same.
        if gate.freshness_days is not None and timed and months is None:
            result.checks.append(freshness(ctx, spec, gate, list(base.files), []))
        if gate.expect_delivery:
            result.checks.append(checks.empty_batch(gate, f"nothing new in {source.ref} since version {mark}"))
        checks.enforce(result.checks)
        return result.finish("skipped", "up to date")
    staging = f"_staging/{ctx.run_id}/silver/{spec.name}"
    extra = new_columns(ctx, spec, source, base)
    common = {"storage": storage, "spec": spec, "run_id": ctx.run_id, "max_rows": ctx.settings.target_file_rows,
              "extra": extra}
    measures = drift_measures(spec) if gate.drift and timed else None
    try:
        reads = [f.item() for f in new_files if f.rows]
        # Only an incremental batch can be late: a full refresh takes every row, like a clean run, and a backfill
        # takes in its months' late rows (and releases them from quarantine after its commit).
        cutoff = None if rebuild else lookback_cutoff(base, spec, lookback_of(ctx, spec))
        kwargs = {**common, "staging": staging, "months": months, "cutoff": cutoff}
        staged: list[Report] = engine.map_items(reads, validate_file, fn_kwargs=kwargs)
        rejected = [m.file for m in staged if isinstance(m, Quarantined)]
        if spec.write_mode == "merge" and not rebuild:
            merged, replaced, result.partitions = _merge_on_keys(ctx, spec, base, staged, staging, extra)
        else:
            merged, replaced, result.partitions = merge_staged(
                ctx, spec, base, staged, staging, common, measures=measures, rebuild=rebuild
            )
        result.files_in = len(new_files)
        new_in = sum(m.rows_in for m in merged)
        result.rows_written = sum(m.kept for m in merged)
        result.rows_duplicate = new_in - result.rows_written + sum(m.duplicates for m in staged if isinstance(m, Read))
        # A backfill counts its months' rows only; their rejects are recorded already (the commit skips them).
        result.rows_in = new_in if months else sum(m.rows for m in staged if isinstance(m, Read))
        result.rows_quarantined = 0 if months else sum(f.rows for f in rejected)
        adds = [f for m in merged for f in m.files]
        # Before any commit: a failed gate leaves no trace.
        result.checks += gate_checks(ctx, spec, gate, base, staged, staging, merged, adds, replaced)
        checks.enforce(result.checks)
        info = {"run_id": ctx.run_id, "stage": "silver", "inputs": {str(source.ref): source.version}}
        quarantine.commit(storage, spec.name, rejected, stage="silver", replace=ctx.full_refresh, metadata=info)
        if months:
            info["backfill"] = list(months)
        if spec.write_mode == "merge" and not rebuild and not adds and not replaced:
            # Compare values, don't rewrite: no new version. The watermark stays, so these files are checked again.
            return result.finish("skipped", "the batch changes nothing: no new version")
        base = with_columns(storage, base, extra, ctx.run_id)
        result.version = table.commit(
            storage,
            base,
            schema=arrow_schema(spec, extra),
            adds=adds,
            removes=replaced,
            partition_by=(spec.partition.column,) if spec.partition else (),
            # A backfill leaves the watermark alone: it rebuilt some months, not everything up to a bronze version.
            app_transactions=None if months else {app_id(spec.name): source.version, **cdc_reset(storage, spec)},
            metadata=info,
        )
    finally:
        storage.delete_dir(staging)
    note = ""
    if months:
        # After the commit: a crash in between leaves a row both in silver and in quarantine, never in neither.
        released = quarantine.release_late(storage, spec.name, months, run_id=ctx.run_id)
        note = f"took in {released} late rows held in quarantine" if released else ""
    return result.finish("committed", note)


def _merge_on_keys(
    ctx: RunContext, spec: SilverSpec, base: table.Snapshot, staged: list[Report], staging: str,
    extra: tuple[str, ...],
) -> tuple[list[Merged], list[TableFile], int]:
    """Write mode ``merge``: the batch merged into the files its keys are in (``lakehouse.table.merge``), uncommitted.
    Reports like :func:`merge_staged` (a rewritten file's report carries its new rows as ``n``, no drift profile)."""
    spec_m = merge.MergeSpec(keys=tuple(spec.keys), order_by=(*spec.order_by, *LINEAGE),
                             partition=spec.partition.column if spec.partition else None)
    files = [m.file for m in staged if isinstance(m, Staged) and not m.keys_only]
    done = merge.execute(ctx.storage, base, files, staging, spec_m, arrow_schema(spec, extra), run_id=ctx.run_id,
                         max_rows=ctx.settings.target_file_rows)
    counts = done.counts
    # kept: the batch's rows that changed the table (the rest were duplicates or no change)
    merged = Merged(tuple(done.adds), sum(f.rows for f in files), counts["inserted"] + counts["updated"])
    return [merged], done.removes, done.partitions


def merge_staged(
    ctx: RunContext,
    spec: SilverSpec,
    base: table.Snapshot,
    staged: list[Report],
    staging: str,
    common: dict[str, Any],
    *,
    measures: list[str] | None,
    rebuild: bool,
) -> tuple[list[Merged], list[TableFile], int]:
    """Merge staged rows into their partitions on workers (uncommitted): the merge tasks' reports, the current files
    the new ones replace, and how many partitions were written."""
    months = ctx.months
    by_partition: dict[str, list[str]] = {}
    for m in staged:
        if isinstance(m, Staged) and not m.keys_only:
            f = m.file
            by_partition.setdefault(json.dumps(f.partition_values, sort_keys=True), []).append(f.path)
    if months:  # every partition of the range is rebuilt, including those left with no rows
        for existing in base.files:
            if in_months(existing.partition_values, spec, months):
                by_partition.setdefault(partition_key(existing), [])
    outside = [m.file for m in staged if isinstance(m, Staged) and m.keys_only]
    owners, moved = key_owners(
        ctx.storage, spec, base, staging, by_partition, outside, full_refresh=ctx.full_refresh, rebuild=rebuild
    )
    for key in moved:
        by_partition.setdefault(key, [])
    replaced = replaced_files(base, spec, list(by_partition), full_refresh=ctx.full_refresh)
    merges: list[dict[str, Any]] = [
        {
            "partition_values": json.loads(key),
            "staged": paths,
            # rebuilt partitions start empty; one a key moved out of keeps its other rows
            "existing": [] if rebuild and key not in moved else [f.item() for f in in_partition(base, key, spec)],
        }
        for key, paths in by_partition.items()
    ]
    kwargs = {**common, "staging": staging, "owners": owners, "measures": measures}
    merged: list[Merged] = engine.map_items(merges, merge_partition, fn_kwargs=kwargs)
    return merged, replaced, len(merges)


def with_columns(storage: Storage, base: table.Snapshot, extra: tuple[str, ...], run_id: str) -> table.Snapshot:
    """The table with the evolved ``extra`` columns it lacks added by run ``run_id``, in a version of its own (a data
    commit cannot widen the schema)."""
    have = set(base.schema.names) if base.schema else set()
    missing = [c for c in extra if c not in have]
    if not base.exists or not missing:
        return base
    return table.add_columns(storage, base, [pa.field(c, pa.string()) for c in missing], run_id=run_id)


def key_owners(
    storage: Storage,
    spec: SilverSpec,
    base: table.Snapshot,
    staging: str,
    by_partition: dict[str, list[str]],
    outside: list[DataFile],
    *,
    full_refresh: bool,
    rebuild: bool,
) -> tuple[Any, set[str]]:
    """Which partition each key belongs to after this batch, where a key could end up in two.

    A key's latest row decides its partition: a correction can move a row to another month, and one batch can hold
    a key in two months. Returns a broadcast ref of ``keys + __owner`` (None when no key can be in two partitions)
    and the partitions outside this batch that hold an older row of a key the batch moved elsewhere. ``outside``
    are the keys a backfill read for months outside its range: they own their keys without being rewritten.
    """
    if not spec.partition or not by_partition:
        return None, set()
    others = [] if full_refresh else [f for f in base.files if partition_key(f) not in by_partition]
    staged = [{"path": p, "partition_values": json.loads(k)} for k, paths in by_partition.items() for p in paths]
    staged += [{"path": f.path, "partition_values": f.partition_values} for f in outside]
    # An incremental batch needs every key it stages (an older row of any may sit in a partition outside the batch);
    # a backfill staged every bronze row's key, so only keys seen in two partitions can have moved.
    all_keys = bool(others) and not rebuild
    owners = engine.broadcast(owners_of_staged, storage, spec, staging, staged, all_keys=all_keys)
    if not others:
        return owners, set()
    hits: list[str] = engine.map_items([f.item() for f in others], moved_away,
                                       fn_kwargs={"storage": storage, "spec": spec, "owners": owners})
    return owners, set(hits)


def replaced_files(base: table.Snapshot, spec: SilverSpec, keys: list[str], *, full_refresh: bool) -> list[TableFile]:
    """The current files a commit replaces: every file on a full refresh, else those of the touched partitions."""
    if full_refresh:
        return list(base.files)
    return [f for key in keys for f in in_partition(base, key, spec)]

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

import dataclasses
import datetime as dt
import json
from typing import Any

import polars as pl
import pyarrow as pa

from lakehouse import bronze, checks, engine, merge, quarantine, table
from lakehouse.context import RunContext, StageResult
from lakehouse.errors import QualityGateFailed, SchemaMismatch
from lakehouse.files import DataFile, partition_value, read_data_file
from lakehouse.frames import arrow_type, read_files, to_frame, without, write_frame
from lakehouse.spec import Partitioning
from lakehouse.spec import Silver as SilverSpec
from lakehouse.storage import Storage
from lakehouse.table import TableFile, TableRef
from lakehouse.validation import ROW_ID, RowCheck, model_dtypes, model_metadata, split_valid

LINEAGE = ("_source_file", "_source_line", "_ingested_at")
# What a worker task reports: a file it wrote (kind, DataFile JSON, rows) or a finding (kind, JSON in info).
META = pa.schema([("kind", pa.string()), ("file", pa.string()), ("n", pa.int64()), ("kept", pa.int64()),
                  ("info", pa.string())])


def ref(name: str) -> TableRef:
    return TableRef("silver", name)


def app_id(name: str) -> str:
    return f"lakehouse/silver.{name}"


def arrow_schema(spec: SilverSpec, extra: tuple[str, ...] = ()) -> pa.Schema:
    """Model columns with their types, ``extra`` columns (new in landed files, schema drift policy ``evolve``) as
    strings, bronze lineage, then the partition column."""
    fields = [(c, arrow_type(t)) for c, t in model_dtypes(spec.model).items()]
    fields += [(c, pa.string()) for c in extra]
    fields += [(n, bronze.LINEAGE.field(n).type) for n in LINEAGE]
    if spec.partition:
        fields.append((spec.partition.column, pa.date32()))
    return pa.schema(fields)


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
    if months and not spec.partition:
        return result.finish("skipped", "not partitioned by month: a backfill leaves it as it is")
    # A full refresh or a backfill rebuilds (all or some) partitions from every bronze row, not from the table.
    rebuild = ctx.full_refresh or months is not None
    gate = checks.gates(spec.name, model_metadata(spec.model), ctx.settings)
    mark = None if rebuild else table.txn_version(storage, ref(spec.name), app_id(spec.name))
    if mark is not None and mark >= source.version:
        # Nothing new is when a stale feed shows: freshness is checked all the same.
        if gate.freshness_days is not None and spec.partition and months is None:
            result.checks.append(_freshness(ctx, spec, gate, list(base.files), []))
        if gate.expect_delivery:
            result.checks.append(checks.empty_batch(gate, f"nothing new in {source.ref} since version {mark}"))
        checks.enforce(result.checks)
        return result.finish("skipped", "up to date")
    new_files = files_since(storage, source, mark)
    staging = f"_staging/{ctx.run_id}/silver/{spec.name}"
    extra = _new_columns(ctx, spec, source, base)
    common = {"storage": storage, "spec": spec, "run_id": ctx.run_id, "max_rows": ctx.settings.target_file_rows,
              "extra": extra}
    measures = _measures(spec) if gate.drift and spec.partition else None
    try:
        reads = [{"path": f.path} for f in new_files if f.rows]
        # Only an incremental batch can be late: a full refresh takes every row, like a clean run, and a backfill
        # takes in its months' late rows (and releases them from quarantine after its commit).
        cutoff = None if rebuild else _lookback_cutoff(base, spec, lookback_of(ctx, spec))
        kwargs = {**common, "staging": staging, "months": months, "cutoff": cutoff}
        staged = engine.collect(engine.run_tasks(reads, _validate_file, fn_kwargs=kwargs))
        rejected = [DataFile.from_json(m["file"]) for m in staged if m["kind"] == "quarantine"]
        if spec.write_mode == "merge" and not rebuild:
            merged, replaced, result.partitions = _merge_on_keys(ctx, spec, base, staged, staging, extra)
        else:
            merged, replaced, result.partitions = _merge_staged(
                ctx, spec, base, staged, staging, common, measures=measures, rebuild=rebuild
            )
        result.files_in = len(new_files)
        new_in = sum(m["n"] for m in merged)
        result.rows_written = sum(m["kept"] for m in merged)
        result.rows_duplicate = new_in - result.rows_written
        # A backfill counts its months' rows only; their rejects are recorded already (the commit skips them).
        result.rows_in = new_in if months else sum(m["n"] for m in staged if m["kind"] == "read")
        result.rows_quarantined = 0 if months else sum(f.rows for f in rejected)
        adds = [DataFile.from_json(m["file"]) for m in merged if m["file"]]
        # Before any commit: a failed gate leaves no trace.
        result.checks += _gate_checks(ctx, spec, gate, base, staged, staging, merged, adds, replaced)
        checks.enforce(result.checks)
        info = {"run_id": ctx.run_id, "stage": "silver", "inputs": {str(source.ref): source.version}}
        quarantine.commit(storage, spec.name, rejected, stage="silver", replace=ctx.full_refresh, metadata=info)
        if months:
            info["backfill"] = list(months)
        if spec.write_mode == "merge" and not rebuild and not adds and not replaced:
            # Compare values, don't rewrite: no new version. The watermark stays, so these files are checked again.
            return result.finish("skipped", "the batch changes nothing: no new version")
        base = _with_columns(storage, base, extra)
        result.version = table.commit(
            storage,
            base,
            schema=arrow_schema(spec, extra),
            adds=adds,
            removes=replaced,
            partition_by=(spec.partition.column,) if spec.partition else (),
            # A backfill leaves the watermark alone: it rebuilt some months, not everything up to a bronze version.
            app_transactions=None if months else {app_id(spec.name): source.version, **_cdc_reset(storage, spec)},
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
    ctx: RunContext, spec: SilverSpec, base: table.Snapshot, staged: list[dict[str, Any]], staging: str,
    extra: tuple[str, ...],
) -> tuple[list[dict[str, Any]], list[TableFile], int]:
    """Write mode ``merge``: the batch merged into the files its keys are in (``lakehouse.merge``), uncommitted.
    Reports like :func:`_merge_staged` (a rewritten file's report carries its new rows as ``n``, no drift profile)."""
    spec_m = merge.MergeSpec(keys=tuple(spec.keys), order_by=(*spec.order_by, *LINEAGE),
                             partition=spec.partition.column if spec.partition else None)
    files = [DataFile.from_json(m["file"]) for m in staged if m["kind"] == "staged"]
    done = merge.execute(ctx.storage, base, files, staging, spec_m, arrow_schema(spec, extra), run_id=ctx.run_id,
                         max_rows=ctx.settings.target_file_rows)
    counts = done.counts
    reports: list[dict[str, Any]] = [{"kind": "merged", "file": f.to_json(), "n": 0, "kept": 0, "info": None}
                                     for f in done.adds]
    # n: the batch's rows, kept: those that changed the table (the rest were duplicates or no change)
    batch = sum(f.rows for f in files)
    reports.append({"kind": "merged", "file": "", "n": batch, "kept": counts["inserted"] + counts["updated"],
                    "info": None})
    return reports, done.removes, done.partitions


def _merge_staged(
    ctx: RunContext,
    spec: SilverSpec,
    base: table.Snapshot,
    staged: list[dict[str, Any]],
    staging: str,
    common: dict[str, Any],
    *,
    measures: list[str] | None,
    rebuild: bool,
) -> tuple[list[dict[str, Any]], list[TableFile], int]:
    """Merge staged rows into their partitions on workers (uncommitted): the merge tasks' reports, the current files
    the new ones replace, and how many partitions were written."""
    months = ctx.months
    by_partition: dict[str, list[str]] = {}
    for m in staged:
        if m["kind"] == "staged":
            f = DataFile.from_json(m["file"])
            by_partition.setdefault(json.dumps(f.partition_values, sort_keys=True), []).append(f.path)
    if months:  # every partition of the range is rebuilt, including those left with no rows
        for existing in base.files:
            if _in_months(existing.partition_values, spec, months):
                by_partition.setdefault(_partition_key(existing), [])
    outside = [DataFile.from_json(m["file"]) for m in staged if m["kind"] == "keys"]
    owners, moved = _key_owners(
        ctx.storage, spec, base, staging, by_partition, outside, full_refresh=ctx.full_refresh, rebuild=rebuild
    )
    for key in moved:
        by_partition.setdefault(key, [])
    replaced = _replaced_files(base, spec, list(by_partition), full_refresh=ctx.full_refresh)
    merges: list[dict[str, Any]] = [
        {
            "partition_values": json.loads(key),
            "staged": paths,
            # rebuilt partitions start empty; one a key moved out of keeps its other rows
            "existing": [] if rebuild and key not in moved else [f.item() for f in _in_partition(base, key, spec)],
        }
        for key, paths in by_partition.items()
    ]
    kwargs = {**common, "staging": staging, "owners": owners, "measures": measures}
    merged = engine.collect(engine.run_tasks(merges, _merge_partition, fn_kwargs=kwargs)) if merges else []
    return merged, replaced, len(merges)


def _with_columns(storage: Storage, base: table.Snapshot, extra: tuple[str, ...]) -> table.Snapshot:
    """The table with the evolved ``extra`` columns it lacks added, in a version of its own (a data commit cannot
    widen the schema)."""
    have = set(base.schema.names) if base.schema else set()
    missing = [c for c in extra if c not in have]
    if not base.exists or not missing:
        return base
    return table.add_columns(storage, base, [pa.field(c, pa.string()) for c in missing])


def replay_id(name: str) -> str:
    return f"lakehouse/replay.{name}"


def replay(ctx: RunContext, spec: SilverSpec) -> StageResult:
    """Re-validate the rows of ``quarantine.<name>`` rejected at the silver stage with the model as it is now (after a
    rule or schema fix) and merge those that pass into silver; the rest stay in quarantine, with their current reason.

    Rows are re-read from bronze (the quarantine record names file and line), so they carry their original lineage
    and a newer row of the same key still wins. The lookback applies as in a run: a row that passes now but is older
    than the window stays, as late, for a backfill; rows held as late are not retried, and lines bronze could not
    parse cannot pass any model.

    Exactly once: the silver commit records the quarantine version it replayed (app transaction
    ``lakehouse/replay.<name>``), and the quarantine commit that drops the replayed rows says which version it
    finishes. A replay whose silver commit has no such quarantine commit (a crash in between, or a lost race on the
    quarantine commit) is finished by the next one without merging again.
    """
    result = StageResult(table=str(ref(spec.name)))
    storage = ctx.storage
    qsnap = table.snapshot(storage, quarantine.ref(spec.name))
    source = table.snapshot(storage, bronze.ref(spec.source))
    base = table.snapshot(storage, ref(spec.name))
    result.version = base.version
    held = [f for f in qsnap.files if quarantine.stage_of(f) == "silver"]
    if not held or not source.exists or not base.exists:
        return result.finish("skipped", "nothing quarantined at the silver stage")
    assert qsnap.version is not None
    result.inputs = {str(qsnap.ref): qsnap.version, str(source.ref): source.version or 0}
    done = table.txn_version(storage, ref(spec.name), replay_id(spec.name))
    unfinished = done is not None and not _replay_finished(storage, spec.name, done)
    if unfinished:
        assert done is not None
        # Finish that replay: the files it read that are still here hold the rows its silver commit took.
        then = {f.path for f in table.snapshot(storage, qsnap.ref, version=done).files}
        still = [f for f in held if f.path in then]
        # None left (a full refresh replaced the silver-stage records since): nothing to finish.
        held, unfinished = (still, True) if still else (held, False)
    by_source: dict[str, list[dict[str, Any]]] = {}
    for f in source.files:
        by_source.setdefault(str(f.mins.get("_source_file")), []).append(f.item())
    items = [{"quarantine": f.item(), "bronze": by_source.get(str(f.mins.get("_source_file")), [])} for f in held]
    staging = f"_staging/{ctx.run_id}/replay/{spec.name}"
    extra = _new_columns(ctx, spec, source, base)
    common = {"storage": storage, "spec": spec, "run_id": ctx.run_id, "max_rows": ctx.settings.target_file_rows,
              "extra": extra}
    cutoff = _lookback_cutoff(base, spec, lookback_of(ctx, spec))
    try:
        kwargs = {**common, "staging": staging, "cutoff": cutoff}
        staged = engine.collect(engine.run_tasks(items, _replay_file, fn_kwargs=kwargs)) if items else []
        replayed = sum(m["n"] for m in staged if m["kind"] == "replayed")
        result.rows_in = sum(m["n"] for m in staged if m["kind"] == "read")
        result.files_in = len(items)
        rewritten = {m["info"] for m in staged if m["kind"] == "rewritten"}
        if not replayed and not rewritten:
            return result.finish("skipped", f"re-validated {result.rows_in} quarantined rows: none passes now")
        replay_of = done if unfinished else qsnap.version
        info = {"run_id": ctx.run_id, "stage": "replay", "inputs": result.inputs, "replay_of": replay_of}
        if replayed and not unfinished:
            merged, replaced, result.partitions = _merge_staged(
                ctx, spec, base, staged, staging, common, measures=None, rebuild=False
            )
            result.rows_written = sum(m["kept"] for m in merged)
            result.rows_duplicate = replayed - result.rows_written
            base = _with_columns(storage, base, extra)
            result.version = table.commit(
                storage, base, schema=arrow_schema(spec, extra),
                adds=[DataFile.from_json(m["file"]) for m in merged if m["file"]], removes=replaced,
                partition_by=(spec.partition.column,) if spec.partition else (),
                app_transactions={replay_id(spec.name): qsnap.version}, metadata=info,
            )
        table.commit(
            storage, qsnap, schema=quarantine.SCHEMA,
            adds=[DataFile.from_json(m["file"]) for m in staged if m["kind"] == "rewritten" and m["file"]],
            removes=[f for f in held if f.path in rewritten], metadata=info,
        )
    finally:
        storage.delete_dir(staging)
    left = result.rows_in - replayed
    note = f"replayed {replayed} of {result.rows_in} quarantined rows; {left} still fail and stay in quarantine"
    if not replayed:
        note += " (with their reasons as of now)"
        return result.finish("committed", note)
    if unfinished:
        note += "; silver already had them (an earlier replay stopped before its quarantine commit)"
    return result.finish("committed", note)


def _replay_finished(storage: Storage, name: str, version: int) -> bool:
    """Has a quarantine commit finished the replay of quarantine version ``version``?"""
    return any(c.get("stage") == "replay" and c.get("replay_of") == str(version)
               for c in table.commits_since(storage, quarantine.ref(name), version))


def cdc_app_id(name: str) -> str:
    """The app transaction of change events applied to ``silver.<name>`` (see ``lakehouse.cdc``)."""
    return f"lakehouse/cdc.{name}"


def _cdc_reset(storage: Storage, spec: SilverSpec) -> dict[str, int]:
    """A table that change events were applied to loses them when this stage rewrites it from its snapshot: reset
    their watermark (-1) in the same commit, so the next change stage applies every event again."""
    applied = table.txn_version(storage, ref(spec.name), cdc_app_id(spec.name))
    return {cdc_app_id(spec.name): -1} if applied is not None else {}


def _gate_checks(
    ctx: RunContext,
    spec: SilverSpec,
    gate: checks.Gates,
    base: table.Snapshot,
    staged: list[dict[str, Any]],
    staging: str,
    merged: list[dict[str, Any]],
    adds: list[DataFile],
    replaced: list[TableFile],
) -> list[checks.CheckResult]:
    """The table's checks on this batch, before its commit (see :mod:`lakehouse.checks`).

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
        quarantined = sum(DataFile.from_json(m["file"]).rows for m in staged if m["kind"] == "quarantine")
        rows_in = sum(m["n"] for m in staged if m["kind"] == "read")
        late = sum(m["n"] for m in staged if m["kind"] == "late")
        if gate.max_quarantined_share is not None:
            reasons = [f for (c, _), f in _findings(staged, "reasons").items() if not c.startswith(quarantine.LATE)]
            worst = max(reasons, key=lambda f: f["n"], default=None)
            out.append(checks.quarantined_share(gate, rows_in, quarantined - late, gate.max_quarantined_share, worst))
        valid = rows_in - quarantined
        if gate.batch_rows is not None and not ctx.full_refresh:
            out.append(checks.batch_rows(gate, valid))
        if gate.expect_delivery and not ctx.full_refresh and valid == 0:
            out.append(checks.empty_batch(gate, f"{rows_in} rows landed, none valid"))
    new_rows = [DataFile.from_json(m["file"]) for m in staged if m["kind"] == "staged"]
    for column, (parent, key) in gate.references.items():
        found = _orphans(ctx, new_rows, staging, column, ref(parent), key)
        out.append(checks.references(gate, column, parent, key, found))
    gone = {r.path for r in replaced}
    kept = [f for f in base.files if f.path not in gone]
    if gate.freshness_days is not None and spec.partition and batch:  # a backfill rebuilds the past on purpose
        out.append(_freshness(ctx, spec, gate, kept, adds))
    if gate.drift and spec.partition:
        out += checks.drift(gate, _drift_pairs(ctx, spec, merged, kept))
    return out


def _freshness(
    ctx: RunContext, spec: SilverSpec, gate: checks.Gates, kept: list[TableFile], adds: list[DataFile]
) -> checks.CheckResult:
    """The freshness check from the log's statistics alone: the newest event date of the files the table will hold
    (a timestamp column has no statistics: the first day of its newest partition, then)."""
    assert spec.partition
    column, part = spec.partition.source_column, spec.partition.column
    newest = [str(v)[:10] for f in kept if (v := f.maxs.get(column) or f.partition_values.get(part)) is not None]
    newest += [str(v)[:10] for f in adds
               if (v := json.loads(f.stats).get("maxValues", {}).get(column) or f.partition_values.get(part))]
    return checks.freshness(gate, dt.date.fromisoformat(max(newest)) if newest else None, ctx.as_of)


def _findings(staged: list[dict[str, Any]], kind: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Workers' findings of ``kind`` summed over files, per (check, column), with the first file's example."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for m in staged:
        if m["kind"] == kind:
            f = json.loads(m["info"])
            key = (f["check"], f["column"])
            if key in found:
                found[key]["n"] += f["n"]
            else:
                found[key] = f
    return found


def _measures(spec: SilverSpec) -> list[str]:
    """The columns whose mean and quantiles drift is measured on: the model's floating-point measures (keys and
    counters move by design)."""
    return [c for c, t in model_dtypes(spec.model).items() if t == pl.Float64]


def _drift_pairs(
    ctx: RunContext, spec: SilverSpec, merged: list[dict[str, Any]], kept: list[TableFile]
) -> list[tuple[str, dict[str, Any], str, dict[str, Any]]]:
    """(month, profile, previous month, profile) for each month written this batch whose previous month has rows:
    written too, or profiled from its current files on a worker."""
    assert spec.partition
    column = spec.partition.column
    written = {}
    for m in merged:
        if m["info"]:
            found = json.loads(m["info"])
            written[found["partition"]] = found["profile"]
    wanted = {spec.partition.shift(month, -1) for month in written} - set(written)
    by_month: dict[str, list[dict[str, Any]]] = {}
    for f in kept:
        month = f.partition_values.get(column)
        if month in wanted:
            by_month.setdefault(month, []).append(f.item())
    items = [{"month": month, "files": files} for month, files in by_month.items()]
    kwargs = {"storage": ctx.storage, "rel": ref(spec.name).rel, "measures": _measures(spec)}
    profiles = dict(written)
    for m in engine.collect(engine.run_tasks(items, _profile_month, fn_kwargs=kwargs)) if items else []:
        found = json.loads(m["info"])
        profiles[found["partition"]] = found["profile"]
    return [(month, written[month], prev, profiles[prev]) for month in sorted(written)
            if (prev := spec.partition.shift(month, -1)) in profiles and profiles[prev]["rows"]]


def _new_columns(
    ctx: RunContext, spec: SilverSpec, source: table.Snapshot, base: table.Snapshot
) -> tuple[str, ...]:
    """Columns beyond the model's, carried as strings: those silver already has (once added, a column is kept, whatever
    the policy of a later run), and, when the source's policy for new columns is ``evolve``, bronze's new ones."""
    known = set(arrow_schema(spec).names)
    have = [c for c in (base.schema.names if base.schema else []) if c not in known]
    if ctx.settings.new_columns.get(spec.source, "fail") == "evolve":
        have += [c for c in bronze.data_columns(source.schema) if c not in known and c not in have]
    return tuple(have)


def files_since(storage: Storage, source: table.Snapshot, mark: int | None) -> list[TableFile]:
    """Bronze files added after version ``mark`` (bronze only ever appends)."""
    if mark is None:
        return list(source.files)
    seen = {f.path for f in table.snapshot(storage, source.ref, version=mark).files}
    return [f for f in source.files if f.path not in seen]


def _key_owners(
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
    others = [] if full_refresh else [f for f in base.files if _partition_key(f) not in by_partition]
    staged = [{"path": p, "partition_values": json.loads(k)} for k, paths in by_partition.items() for p in paths]
    staged += [{"path": f.path, "partition_values": f.partition_values} for f in outside]
    # An incremental batch needs every key it stages (an older row of any may sit in a partition outside the batch);
    # a backfill staged every bronze row's key, so only keys seen in two partitions can have moved.
    all_keys = bool(others) and not rebuild
    owners = engine.broadcast(_owners_of_staged, storage, spec, staging, staged, all_keys=all_keys)
    if not others:
        return owners, set()
    hits = engine.collect(
        engine.run_tasks([f.item() for f in others], _moved_away, fn_kwargs={
            "storage": storage, "spec": spec, "owners": owners})
    )
    return owners, {h["partition"] for h in hits if h["partition"]}


def _partition_key(f: TableFile) -> str:
    return json.dumps(f.partition_values, sort_keys=True)


def _replaced_files(base: table.Snapshot, spec: SilverSpec, keys: list[str], *, full_refresh: bool) -> list[TableFile]:
    """The current files a commit replaces: every file on a full refresh, else those of the touched partitions."""
    if full_refresh:
        return list(base.files)
    return [f for key in keys for f in _in_partition(base, key, spec)]


def lookback_of(ctx: RunContext, spec: SilverSpec) -> int | None:
    """The table's lookback in periods of its partitioning: the settings' (``Settings.lookback``), else declared."""
    return ctx.settings.lookback.get(spec.name, ctx.settings.lookback.get("*", spec.lookback))


def _lookback_cutoff(base: table.Snapshot, spec: SilverSpec, lookback: int | None) -> str | None:
    """The first partition a late row may still update (the table's newest partition minus ``lookback`` periods), or
    None when any late row may (no lookback set, an unpartitioned or empty table)."""
    if lookback is None or not spec.partition:
        return None
    newest = [v for f in base.files if (v := f.partition_values.get(spec.partition.column))]
    if not newest:
        return None
    return spec.partition.shift(max(newest), -lookback)


def _in_months(values: dict[str, str | None], spec: SilverSpec, months: tuple[str, str]) -> bool:
    """Does the partition's period meet the backfill's months (``months``: the first days of the first and last)?"""
    assert spec.partition
    value = values.get(spec.partition.column)
    if value is None:
        return False
    end = Partitioning(spec.partition.column, spec.partition.source_column, "month").shift(months[1], 1)
    return value < end and spec.partition.shift(value, 1) > months[0]


def _in_partition(base: table.Snapshot, key: str, spec: SilverSpec) -> list[TableFile]:
    if not spec.partition:
        return list(base.files)
    return base.files_in([tuple(json.loads(key).values())])


# --- worker side -------------------------------------------------------------------------------------------------


def _owners_of_staged(
    storage: Storage, spec: SilverSpec, staging: str, files: list[dict[str, Any]], *, all_keys: bool
) -> pl.DataFrame:
    """``keys + __owner`` (the partition of the key's latest staged row): every staged key when ``all_keys``, else
    only the keys staged in more than one partition. Reads keys first, lineage only for keys in two partitions."""
    assert spec.partition
    keys, part = list(spec.keys), spec.partition.column
    df = read_files(storage, staging, files, columns=[*keys, part], partition_types={part: pl.String})
    owners = df.unique().rename({part: "__owner"})
    split = owners.group_by(keys).agg(pl.len().alias("__n")).filter(pl.col("__n") > 1).drop("__n")
    if split.height:
        columns = [*keys, part, *LINEAGE]
        lineage = read_files(storage, staging, files, columns=columns, partition_types={part: pl.String})
        latest = (
            lineage.join(split, on=keys, how="semi")
            .sort(list(LINEAGE), maintain_order=True)
            .unique(subset=keys, keep="last", maintain_order=True)
            .select(*keys, pl.col(part).alias("__owner"))
        )
        owners = pl.concat([owners.join(split, on=keys, how="anti"), latest])
    return owners if all_keys else owners.join(split, on=keys, how="semi")


def _moved_away(item: dict[str, Any], *, storage: Storage, spec: SilverSpec, owners: Any) -> pa.Table:
    """Does this existing file hold a key whose latest row now belongs to another partition?"""
    keys = list(spec.keys)
    owner: pl.DataFrame = engine.fetch(owners)
    here = item["partition_values"]
    df = read_files(storage, ref(spec.name).rel, [item], columns=keys)
    hit = df.join(owner, on=keys, how="inner").filter(pl.col("__owner") != next(iter(here.values()))).height
    partition = json.dumps(here, sort_keys=True) if hit else None
    return pa.table({"partition": [partition]}, schema=pa.schema([("partition", pa.string())]))


def _validate_file(
    item: dict[str, Any],
    *,
    storage: Storage,
    spec: SilverSpec,
    run_id: str,
    staging: str,
    max_rows: int,
    months: tuple[str, str] | None,
    cutoff: str | None,
    extra: tuple[str, ...],
) -> pa.Table:
    raw = read_files(storage, bronze.ref(spec.source).rel, [{"path": item["path"], "partition_values": {}}])
    missing = [c for c in model_dtypes(spec.model) if c not in raw.columns]
    if missing:
        landed = raw.get_column("_source_file")[0] if raw.height else item["path"]
        raise SchemaMismatch(
            f"required column {missing[0]!r} is missing (the model needs {', '.join(missing)})",
            table=str(ref(spec.name)), path=landed, column=missing[0],
        )
    split = split_valid(raw, spec.model, _late_check(spec, cutoff, months))
    if split.failing.height:
        raise row_failure(str(ref(spec.name)), raw, split.failing)
    out: list[dict[str, Any]] = [{"kind": "read", "file": "", "n": raw.height, "kept": 0}]
    out += _summaries(raw, split.warned, "warn") + _summaries(raw, split.rejected, "reasons")
    if split.rejected.height:
        qfile = _write_rejected(storage, spec, raw, split.rejected, run_id)
        out.append({"kind": "quarantine", "file": qfile.to_json(), "n": qfile.rows, "kept": 0})
        held = int(split.rejected.get_column("check").str.starts_with(quarantine.LATE).sum())
        if held:  # held back by the lookback on purpose: counted, but not against the quality gate
            out.append({"kind": "late", "file": "", "n": held, "kept": 0})
    out += _stage_valid(storage, spec, staging, split.valid, extra=extra, max_rows=max_rows, months=months)
    return pa.Table.from_pylist(out, schema=META)


def _stage_valid(
    storage: Storage,
    spec: SilverSpec,
    staging: str,
    valid: pl.DataFrame,
    *,
    extra: tuple[str, ...],
    max_rows: int,
    months: tuple[str, str] | None,
) -> list[dict[str, Any]]:
    """Stage valid rows by target partition (a backfill stages rows outside its months as keys only)."""
    # Files landed before a column was added lack it: null there.
    valid = valid.with_columns(pl.lit(None, pl.String).alias(c) for c in extra if c not in valid.columns)
    out = []
    schema = arrow_schema(spec, extra)
    file_schema = schema
    if spec.partition:
        p = spec.partition
        valid = valid.with_columns(p.expr())
        file_schema = without(schema, [p.column])
        groups = valid.partition_by(p.column, as_dict=True, include_key=False) if valid.height else {}
        parts = [({p.column: partition_value(k[0])}, g) for k, g in groups.items()]
        if months:
            # A backfill rewrites only its months; of the others it needs only who holds which key, and when.
            outside = [(v, g) for v, g in parts if not _in_months(v, spec, months)]
            parts = [(v, g) for v, g in parts if _in_months(v, spec, months)]
            keys_schema = pa.schema([schema.field(c) for c in [*spec.keys, *LINEAGE]])
            for values, frame in outside:
                for f in write_frame(storage, staging, frame, keys_schema, partition_values=values, prefix="keys",
                                     max_rows=max_rows):
                    out.append({"kind": "keys", "file": f.to_json(), "n": f.rows, "kept": 0})
    else:
        parts = [({}, valid)] if valid.height else []
    for values, frame in parts:
        for f in write_frame(
            storage, staging, frame, file_schema, partition_values=values, prefix="staged", max_rows=max_rows
        ):
            out.append({"kind": "staged", "file": f.to_json(), "n": f.rows, "kept": 0})
    return out


def _replay_file(
    item: dict[str, Any],
    *,
    storage: Storage,
    spec: SilverSpec,
    run_id: str,
    staging: str,
    max_rows: int,
    extra: tuple[str, ...],
    cutoff: str | None,
) -> pa.Table:
    """Re-validate one quarantine file's rows from their bronze lines: stage those that pass, and rewrite the file
    without them (rows that still fail get a record with their current reason)."""
    held = to_frame(read_data_file(storage, quarantine.ref(spec.name).rel, item["quarantine"]["path"]))
    retry = held.filter(~pl.col("check").str.starts_with(quarantine.LATE))
    raw = read_files(storage, bronze.ref(spec.source).rel, item["bronze"]) if item["bronze"] else pl.DataFrame()
    out: list[dict[str, Any]] = [{"kind": "read", "file": "", "n": retry.height, "kept": 0}]
    if not raw.height or not retry.height:
        return pa.Table.from_pylist(out, schema=META)
    lineage = ["_source_file", "_source_line"]
    raw = raw.join(retry.select(lineage).unique(), on=lineage, how="semi").sort("_source_line")
    split = split_valid(raw, spec.model, _late_check(spec, cutoff, None))
    if split.failing.height:
        raise row_failure(str(ref(spec.name)), raw, split.failing)
    fresh = rejected_records(raw, split.rejected, run_id) if split.rejected.height else None
    before = retry.select(*lineage, "check").sort(lineage)
    after = to_frame(fresh).select(*lineage, "check").sort(lineage) if fresh is not None else before.clear()
    if not split.valid.height and before.equals(after):
        return pa.Table.from_pylist(out, schema=META)  # nothing passes and every reason stands: leave the file
    if split.valid.height:
        out.append({"kind": "replayed", "file": "", "n": split.valid.height, "kept": 0})
        out += _stage_valid(storage, spec, staging, split.valid, extra=extra, max_rows=max_rows, months=None)
    kept = held.join(raw.select(lineage), on=lineage, how="anti").to_arrow().cast(quarantine.SCHEMA)
    left = pa.concat_tables([kept, fresh]) if fresh is not None else kept
    written = ""
    if left.num_rows:
        source = left.column("_source_file")[0].as_py()
        written = quarantine.write(storage, spec.name, left, stage="silver", source_file=source,
                                   run_id=run_id).to_json()
    out.append({"kind": "rewritten", "file": written, "n": left.num_rows, "kept": 0,
                "info": item["quarantine"]["path"]})
    return pa.Table.from_pylist(out, schema=META)


def _late_check(spec: SilverSpec, cutoff: str | None, months: tuple[str, str] | None) -> tuple[RowCheck, ...]:
    """Older than the lookback window: held in quarantine until a backfill of its month takes it in."""
    if not cutoff or not spec.partition:
        return ()
    column = spec.partition.source_column
    late = spec.partition.expr() < dt.date.fromisoformat(cutoff)  # the row's partition, before the first still open
    if months:
        month = pl.col(column).cast(pl.Date).dt.truncate("1mo")
        late = late & ~month.is_between(dt.date.fromisoformat(months[0]), dt.date.fromisoformat(months[1]))
    return (RowCheck(f"late_arrival(before {spec.partition.label(cutoff)})", column, late),)


def row_failure(table_name: str, raw: pl.DataFrame, failing: pl.DataFrame) -> QualityGateFailed:
    """Rows of ``raw`` failed a row rule whose action is ``fail`` (``failing``: ``ROW_ID``, check, column, value): the
    error names the check, column, landed value, file and line, and carries the failed check for ``_meta.checks``."""
    first = failing.row(0, named=True)
    where = raw.row(first[ROW_ID], named=True)
    line, path = where.get("_source_line"), where.get("_source_file")
    value = where.get(first["column"], first["value"])  # as landed: a rule sees "-5.0" for a landed "-5.00"
    message = (f"row check {first['check']} failed on column {first['column']} (value {value!r}) at line {line}, "
               f"{failing.height} row(s) in this file; its action is fail")
    check = checks.CheckResult(table_name, f"{first['check']} on {first['column']}", float(failing.height), 0.0,
                               "fail", False, f"{message} ({path})")
    return QualityGateFailed(message, table=table_name, check=first["check"], column=first["column"], path=path,
                             row=line, checks=[dataclasses.asdict(check)])


def _summaries(raw: pl.DataFrame, failures: pl.DataFrame, kind: str) -> list[dict[str, Any]]:
    """Per (check, column): how many rows, and the first one's value, file and line."""
    if not failures.height:
        return []
    lineage = raw.with_row_index(ROW_ID).select(ROW_ID, "_source_file", "_source_line")
    first = (
        failures.join(lineage, on=ROW_ID, how="left")
        .group_by("check", "column", maintain_order=True)
        .agg(pl.len().alias("n"), pl.col(ROW_ID).first(), pl.col("value").first(),
             pl.col("_source_file").first().alias("file"), pl.col("_source_line").first().alias("line"))
    )
    out = []
    for r in first.iter_rows(named=True):
        landed = raw.row(r.pop(ROW_ID), named=True)
        r["value"] = landed.get(r["column"], r["value"])  # as landed, not as the rule saw it typed
        out.append({"kind": kind, "file": "", "n": r["n"], "kept": 0, "info": json.dumps(r, default=str)})
    return out


def _orphans(
    ctx: RunContext, rows: list[DataFile], staging: str, column: str, parent: TableRef, key: str
) -> dict[str, Any]:
    """The batch's rows (staged files) whose ``column`` matches no ``key`` of ``parent``: how many, of how many, and
    the smallest five such values.

    On workers, never a whole table in one process: the batch's distinct values (in hash buckets of at most
    4 x ``broadcast_max_rows`` rows, one round per bucket) are broadcast, each parent file reports which of them it
    holds, and one combine step counts the rest."""
    total: dict[str, Any] = {"orphans": 0, "checked": 0, "sample": []}
    if not rows:
        return total
    storage = ctx.storage
    parent_files = [f.item() for f in table.snapshot(storage, parent).files] or [{"path": None}]
    items = [{"path": f.path, "partition_values": f.partition_values} for f in rows]
    buckets = max(1, -(-sum(f.rows for f in rows) // (4 * ctx.settings.broadcast_max_rows)))
    for bucket in range(buckets):
        keys = engine.broadcast(_child_keys, storage, staging, items, column, bucket, buckets)
        hits = engine.run_tasks(parent_files, _parent_hits, fn_kwargs={"storage": storage, "rel": parent.rel,
                                                                        "key": key, "keys": keys})
        found = json.loads(engine.collect(engine.combine(hits, _orphan_count, fn_kwargs={"keys": keys}))[0]["info"])
        total["orphans"] += found["orphans"]
        total["checked"] += found["checked"]
        total["sample"] = sorted(total["sample"] + found["sample"])[:5]
    return total


def _child_keys(
    storage: Storage, staging: str, items: list[dict[str, Any]], column: str, bucket: int, buckets: int
) -> pl.DataFrame:
    """The distinct non-null values of ``column`` in one hash bucket of the staged rows, and how many rows hold each."""
    values = read_files(storage, staging, items, columns=[column]).get_column(column).drop_nulls()
    if buckets > 1:
        values = values.filter(values.hash(seed=0) % buckets == bucket)
    return values.value_counts(name="__n").rename({column: "__value"})


def _parent_hits(item: dict[str, Any], *, storage: Storage, rel: str, key: str, keys: Any) -> pa.Table:
    """Which of the broadcast values this parent file holds."""
    wanted: pl.DataFrame = engine.fetch(keys)
    if item["path"] is None:  # no parent table (yet): nothing is found
        hits = wanted.select("__value").clear()
    else:
        own = read_files(storage, rel, [item], columns=[key]).get_column(key).unique()
        hits = wanted.select("__value").join(own.cast(wanted.schema["__value"]).rename("__value").to_frame(),
                                              on="__value", how="semi")
    # One null row always: a combine step over blocks that are all empty would never run.
    return pl.concat([hits, pl.DataFrame({"__value": [None]}, schema=hits.schema)]).to_arrow()


def _orphan_count(found: pa.Table, *, keys: Any) -> pa.Table:
    """The broadcast values no parent file holds: rows, distinct values and a sample."""
    wanted: pl.DataFrame = engine.fetch(keys)
    hits = to_frame(found).drop_nulls().unique()
    missing = wanted.join(hits, on="__value", how="anti")
    info = {"orphans": int(missing.get_column("__n").sum()), "checked": int(wanted.get_column("__n").sum()),
            "sample": missing.get_column("__value").sort().head(5).to_list()}
    return pa.Table.from_pylist([{"kind": "orphans", "file": "", "n": info["orphans"], "kept": 0,
                                  "info": json.dumps(info, default=str)}], schema=META)


def _profile_month(item: dict[str, Any], *, storage: Storage, rel: str, measures: list[str]) -> pa.Table:
    """The drift profile of one month's current files."""
    df = read_files(storage, rel, item["files"])
    info = {"partition": item["month"], "profile": checks.profile(df, measures)}
    return pa.Table.from_pylist([{"kind": "profile", "file": "", "n": df.height, "kept": 0,
                                  "info": json.dumps(info)}], schema=META)


def _write_rejected(
    storage: Storage, spec: SilverSpec, raw: pl.DataFrame, rejected: pl.DataFrame, run_id: str
) -> DataFile:
    q = rejected_records(raw, rejected, run_id)
    landed = q.column("_source_file")[0].as_py()
    return quarantine.write(storage, spec.name, q, stage="silver", source_file=landed, run_id=run_id)


def rejected_records(raw: pl.DataFrame, rejected: pl.DataFrame, run_id: str) -> pa.Table:
    """Quarantine records (``quarantine.SCHEMA``) of the rejected rows of ``raw``."""
    data_columns = [c for c in raw.columns if not c.startswith("_")]
    rows = raw.with_row_index(ROW_ID).join(rejected.with_columns(pl.col(ROW_ID).cast(pl.UInt32)), on=ROW_ID)
    originals = list(rows.select(data_columns).iter_rows(named=True))
    columns = rows.get_column("column").to_list()
    return quarantine.records(
        stage="silver",
        checks=rows.get_column("check").to_list(),
        columns=columns,
        # The value as landed (a rule sees the typed value: "-5.0" for a landed "-5.00").
        values=[r[c] if c in r else v for r, c, v in zip(originals, columns, rows.get_column("value"), strict=True)],
        failures=rows.get_column("failures").to_list(),
        rows=[json.dumps(r) for r in originals],
        source_files=rows.get_column("_source_file").to_list(),
        source_lines=rows.get_column("_source_line").to_list(),
        run_id=run_id,
    )


def _merge_partition(
    item: dict[str, Any],
    *,
    storage: Storage,
    spec: SilverSpec,
    run_id: str,
    staging: str,
    max_rows: int,
    owners: Any,
    extra: tuple[str, ...],
    measures: list[str] | None,
) -> pa.Table:
    values = item["partition_values"]
    staged = read_files(storage, staging, [{"path": p, "partition_values": values} for p in item["staged"]])
    if not item["staged"]:  # a partition rewritten only because a key moved out of it
        part = [spec.partition.column] if spec.partition else []
        staged = to_frame(without(arrow_schema(spec, extra), part).empty_table())
    existing = read_files(storage, ref(spec.name).rel, item["existing"])
    frames = [staged.with_columns(pl.lit(True).alias("__new"))]
    if existing.height:
        frames.insert(0, existing.with_columns(pl.lit(False).alias("__new")))
    candidates = pl.concat(frames, how="diagonal_relaxed")  # rows written before a new column read it as null
    if owners is not None:
        # Rows whose key's latest row belongs to another partition leave this one.
        owner: pl.DataFrame = engine.fetch(owners)
        here = next(iter(values.values()))
        elsewhere = owner.filter(pl.col("__owner") != here).drop("__owner")
        candidates = candidates.join(elsewhere, on=list(spec.keys), how="anti")
    merged = (
        candidates.sort(list(LINEAGE), maintain_order=True)
        .unique(subset=list(spec.keys), keep="last", maintain_order=True)
    )
    kept = int(merged.get_column("__new").sum())
    schema = arrow_schema(spec, extra)
    if spec.partition:
        schema = without(schema, [spec.partition.column])
    files = write_frame(
        storage, ref(spec.name).rel, merged.drop("__new"), schema, partition_values=values,
        prefix=f"part-{run_id}", max_rows=max_rows,
    )
    rows: list[dict[str, Any]] = [{"kind": "merged", "file": f.to_json(), "n": 0, "kept": 0} for f in files]
    if rows:
        rows[0]["n"], rows[0]["kept"] = staged.height, kept
    else:
        rows = [{"kind": "merged", "file": "", "n": staged.height, "kept": kept}]
    if measures is not None:  # drift is measured per month, on the partition as written
        profile = checks.profile(merged.drop("__new"), measures)
        rows[0]["info"] = json.dumps({"partition": next(iter(values.values())), "profile": profile})
    return pa.Table.from_pylist(rows, schema=META)

"""Table maintenance (``lakehouse maintain``): compaction sorted by the tables' keys, checkpoints and log clean-up,
vacuum, and a health record per table and partition in ``_meta.table_health``.

Compaction rewrites a partition's small files (under half of ``Settings.target_file_rows``) into files of up to that
many rows, sorted by the table's keys (a silver table's, a gold table's, a change history's keys and LSN), so MERGE,
change capture and key filters prune by the files' key ranges; a bronze table's by landed file and line. Its commit
says ``dataChange=false`` and is made against the version it planned from: a pipeline run that commits first wins,
and the table is tried again next time (the run that loses to a compaction re-plans, like against any commit).

Bronze gains a file per landed file: a compacted bronze file holds many, and which ones is recorded in
``_meta.bronze_files`` before its commit (:mod:`lakehouse.bronze.landed`), so ingestion still knows every file it
has taken and a silver table that has not caught up reads only its landed files' rows of it. Quarantine tables are
left alone: each of their files holds one landed file's rejects at one stage, which replay rewrites file by file,
and only landed files with rejects have one.

Vacuum deletes the files a version removed more than ``retention_hours`` ago and the orphans of runs that never
committed (:func:`lakehouse.ops.maintenance.sweep`); versions younger than the retention can still be read (time
travel), so it must be longer than the longest run and than how far back anyone reads.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa

from lakehouse import engine, table
from lakehouse.bronze import landed
from lakehouse.errors import CommitConflict, TableError
from lakehouse.ops import maintenance
from lakehouse.running.context import RunContext
from lakehouse.spec import Pipeline
from lakehouse.storage import Storage
from lakehouse.storage.files import DataFile, read_data_file, write_data_file
from lakehouse.storage.frames import to_arrow
from lakehouse.table import TableRef

log = logging.getLogger("lakehouse")

HEALTH = TableRef("_meta", "table_health")
HEALTH_SCHEMA = pa.schema([
    ("table", pa.string()), ("partition", pa.string()), ("version", pa.int64()), ("files", pa.int64()),
    ("small_files", pa.int64()), ("bytes", pa.int64()), ("rows", pa.int64()), ("compacted", pa.int64()),
    ("outcome", pa.string()), ("run_id", pa.string()), ("maintained_at", pa.timestamp("us", tz="UTC")),
])
LEFT_ALONE = ("quarantine",)  # one file per landed file and stage: see the module's docstring


@dataclass
class TableReport:
    """What maintenance did to one table: the files it replaced and wrote, its outcome, and vacuum's deletions."""

    table: str
    version: int | None
    outcome: str  # compacted, nothing to compact, left alone, skipped: <why>
    removed: int = 0
    added: int = 0
    vacuumed: int = 0
    files_before: int = 0
    files_after: int = 0


@dataclass
class Report:
    run_id: str
    tables: list[TableReport] = field(default_factory=list)
    orphans: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "seconds": round(self.seconds, 2), "orphans_removed": self.orphans,
                "tables": [t.__dict__ for t in self.tables]}


def sort_keys(pipeline: Pipeline) -> dict[str, tuple[str, ...]]:
    """The columns each table's compacted files are sorted by, by table name (``silver.orders``)."""
    keys: dict[str, tuple[str, ...]] = {f"bronze.{s.name}": ("_source_file", "_source_line") for s in pipeline.sources}
    for s in pipeline.silver:
        keys[f"silver.{s.name}"] = tuple(s.keys)
    for c in pipeline.cdc:
        keys[f"silver.{c.history}"] = (*pipeline.silver_spec(c.table).keys, "_lsn")
    for g in pipeline.gold:
        keys[f"gold.{g.name}"] = tuple(g.keys)
    return keys


def maintain(ctx: RunContext, pipeline: Pipeline, *, retention_hours: float = 168.0, compact: bool = True,
             tables: tuple[str, ...] = (), dry_run: bool = False) -> Report:
    """Maintain every table of the lake (or those named in ``tables``): compact, checkpoint, clean the log, vacuum,
    and record each table's health. A table a concurrent commit got to first is skipped (and tried next time)."""
    started = time.perf_counter()
    storage, target = ctx.storage, ctx.settings.target_file_rows
    report = Report(run_id=ctx.run_id)
    keys = sort_keys(pipeline)
    health: list[dict[str, Any]] = []
    for ref in table.list_tables(storage, maintenance.LAYERS):
        name = str(ref)
        if (tables and name not in tables) or ref == HEALTH:
            continue
        snap = table.snapshot(storage, ref)
        done = TableReport(name, snap.version, "nothing to compact", files_before=len(snap.files))
        if ref.layer in LEFT_ALONE or not compact:
            done.outcome = "left alone" if ref.layer in LEFT_ALONE else "not compacted (--no-compact)"
        else:
            groups = plan(snap, target)
            if groups and dry_run:
                done.outcome = f"would compact {sum(len(g) for g in groups)} files into {len(groups)}+"
            elif groups:
                done = _compact(ctx, snap, groups, keys.get(name, ()), done)
        snap = table.snapshot(storage, ref)
        if not dry_run:
            done.vacuumed = _tidy(storage, ref, retention_hours)
        done.files_after = len(snap.files)
        done.version = snap.version
        report.tables.append(done)
        health += _health(snap, target, done)
        log.info("%s: %s (%d files -> %d)", name, done.outcome, done.files_before, done.files_after)
    if not dry_run:
        report.orphans = maintenance.sweep(storage, retention_seconds=retention_hours * 3600).count
        now = dt.datetime.now(dt.UTC)
        rows = [{**h, "run_id": ctx.run_id, "maintained_at": now} for h in health]
        if rows:
            table.append_rows(storage, HEALTH, pa.Table.from_pylist(rows, schema=HEALTH_SCHEMA))
    report.seconds = time.perf_counter() - started
    return report


def plan(snap: table.Snapshot, target_rows: int) -> list[list[table.TableFile]]:
    """Groups of small files (under half the target) of one partition each, of up to ``target_rows`` rows; only
    groups of two files or more (rewriting one file changes nothing). A bronze table's empty files stay: each is the
    record that a landed file whose every line was malformed has been ingested (compacted, it would hold no row to
    say so)."""
    small = target_rows // 2
    keep_empty = snap.ref.layer == "bronze"
    by_partition: dict[tuple[Any, ...], list[table.TableFile]] = {}
    for f in snap.files:
        if f.rows < small and not (keep_empty and f.rows == 0):
            by_partition.setdefault(tuple(sorted(f.partition_values.items())), []).append(f)
    groups: list[list[table.TableFile]] = []
    for files in by_partition.values():
        current: list[table.TableFile] = []
        rows = 0
        for f in sorted(files, key=lambda f: (f.added_ms, f.path)):
            if current and rows + f.rows > target_rows:
                groups.append(current)
                current, rows = [], 0
            current.append(f)
            rows += f.rows
        groups.append(current)
    return [g for g in groups if len(g) > 1]


def _compact(ctx: RunContext, snap: table.Snapshot, groups: list[list[table.TableFile]], sort_by: tuple[str, ...],
             done: TableReport) -> TableReport:
    storage = ctx.storage
    assert snap.schema is not None
    file_schema = pa.schema([f for f in snap.schema if f.name not in snap.partition_by])
    items = [{"files": [f.path for f in g], "partition_values": g[0].partition_values} for g in groups]
    kwargs = {"storage": storage, "table_rel": snap.ref.rel, "schema": file_schema,
              "sort_by": [c for c in sort_by if c in file_schema.names], "max_rows": ctx.settings.target_file_rows,
              "prefix": f"{landed.COMPACTED}-{ctx.run_id}", "lineage": snap.ref.layer == "bronze"}
    done_groups: list[Compacted] = engine.map_items(items, compact_group, fn_kwargs=kwargs)
    written = [c.file for c in done_groups]
    removes = [f for g in groups for f in g]
    if snap.ref.layer == "bronze":
        # before the commit: a compacted file in the log always has its landed files on record
        landed.record(storage, snap.ref, {c.file.path: c.landed for c in done_groups}, ctx.run_id)
    try:
        table.commit(storage, snap, schema=snap.schema, adds=written, removes=removes, data_change=False,
                     metadata={"run_id": ctx.run_id, "stage": "maintain", "compacted": len(removes)})
    except CommitConflict:
        # a pipeline run (or another maintenance) committed first: its data wins; the files written here are
        # orphans the next sweep removes, and the table is tried again next time
        table.delete_files(storage, snap.ref, (f.path for f in written))
        done.outcome = "skipped: a concurrent commit got there first (tried again next time)"
        return done
    done.outcome, done.removed, done.added = "compacted", len(removes), len(written)
    return done


def _tidy(storage: Storage, ref: TableRef, retention_hours: float) -> int:
    """A checkpoint, the log entries past the table's log retention, and vacuum: files removed more than
    ``retention_hours`` ago. Returns how many files vacuum deleted."""
    dt_ = table.open_table(storage, ref)
    if dt_ is None:
        return 0
    try:
        dt_.create_checkpoint()
        dt_.cleanup_metadata()
        return len(dt_.vacuum(retention_hours=int(retention_hours), dry_run=False, enforce_retention_duration=False))
    except Exception as e:  # deltalake's own errors, named with the table
        raise TableError(f"maintenance failed: {e}", table=str(ref)) from e


def _health(snap: table.Snapshot, target_rows: int, done: TableReport) -> list[dict[str, Any]]:
    """Per partition of the table: files, small files, bytes, rows."""
    small = target_rows // 2
    parts: dict[str, dict[str, Any]] = {}
    for f in snap.files:
        key = json.dumps(f.partition_values, sort_keys=True) if f.partition_values else ""
        p = parts.setdefault(key, {"files": 0, "small_files": 0, "bytes": 0, "rows": 0})
        p["files"] += 1
        p["small_files"] += f.rows < small
        p["bytes"] += f.size
        p["rows"] += f.rows
    return [{"table": done.table, "partition": k or None, "version": snap.version, **v,
             "compacted": done.removed, "outcome": done.outcome} for k, v in sorted(parts.items())]


# --- worker side -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Compacted:
    """A file written by compaction (uncommitted) and, in a bronze table, the landed files it holds."""

    file: DataFile
    landed: tuple[str, ...] = ()


def compact_group(item: dict[str, Any], *, storage: Storage, table_rel: str, schema: pa.Schema, sort_by: list[str],
                  max_rows: int, prefix: str, lineage: bool) -> list[Compacted]:
    """One partition's small files as files of up to ``max_rows`` rows, sorted by ``sort_by``; with ``lineage``, each
    with the landed files (``_source_file``) its rows came from."""
    parts = [pl.from_arrow(read_data_file(storage, table_rel, path)) for path in item["files"]]
    rows = pl.concat([p for p in parts if isinstance(p, pl.DataFrame)], how="diagonal_relaxed")
    if sort_by:
        rows = rows.sort(sort_by, nulls_last=True, maintain_order=True)
    # a column added to the table after some of these files were written: null in them
    rows = rows.with_columns(pl.lit(None).alias(c) for c in schema.names if c not in rows.columns).select(schema.names)
    out = []
    for chunk in rows.iter_slices(max_rows):
        if chunk.height:
            f = write_data_file(storage, table_rel, to_arrow(chunk, schema), partition_values=item["partition_values"],
                                prefix=f"{prefix}-{uuid.uuid4().hex[:8]}")
            held = tuple(chunk.get_column("_source_file").unique().sort().to_list()) if lineage else ()
            out.append(Compacted(f, held))
    return out

"""MERGE (upsert and delete) on declared keys, distributed: planned from the Delta log, executed on Ray workers (a
task per touched partition, or per key range of a large one), committed once.

Plan (driver, from the log only). The source is a set of files staged by workers, typed and laid out like the target
(the partition column is in the file's partition values, not in its rows), with an optional boolean delete column and
the spec's ordering columns. A target file is a *candidate* when it lies in a partition the source touches and the
range of its first key column (min/max statistics) overlaps that of the partition's source files; the partition's task
then reads only the candidates whose range holds one of its source keys. No other file is read.

Tasks. A touched partition is one task, unless its candidates hold more than ``group_rows`` rows: then they are split
by key range. Candidates whose first-key ranges overlap stay together (so a key is found in one task), and these
groups are packed in key order into tasks of about ``group_rows`` rows. Task *i* owns the keys from its first file's
low key up to the next task's: source keys in no file's range (inserts) go to the task whose range holds them. A task
reads its files one at a time, so its memory is its share of the source and about two target files, however large
the partition.

Execute (workers). The task's source rows are reduced to one per key: the last by
``order_by`` (the duplicates are counted). Each affected file is read; a matched key is deleted (delete column true) or
updated when one of its compared values differs. A file with no such change is left as it is: not rewritten, and a
merge whose source changes nothing commits nothing, so a rerun makes no new version. Source rows whose key no file of
the task holds are inserted into the partition, in the last rewritten file when there is one (no extra small
file), else in a new one; a delete of an unknown key is counted and dropped.

Commit (driver): one transaction that removes the rewritten files and adds their replacements and the inserts, with the
caller's app transaction, against the version planned from. A concurrent commit makes it fail with
:class:`~lakehouse.errors.CommitConflict` and the caller re-plans; it never overwrites blindly.

Keys are assumed to stay in their partition (the partition is derived from a column a change does not move, such as
an order's date); a table whose keys move between partitions is merged by partition overwrite (``lakehouse.silver``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from lakehouse import engine, table
from lakehouse.storage import Storage
from lakehouse.storage.files import DataFile
from lakehouse.table import Snapshot, TableFile
from lakehouse.table.merge_tasks import BATCH_ROWS, COUNTS, CommittedReport, TaskReport, merge_group, merge_in_one_task
from lakehouse.table.ranges import bounds, overlaps, ranged_item, stat


@dataclass(frozen=True)
class MergeSpec:
    """How source rows meet target rows.

    ``keys`` identify a row. ``order_by``: of several source rows with one key, the last by these columns wins (then the
    later file and row, so the choice is deterministic). ``compare``: the columns whose change makes a matched row an
    update (None: every column not starting with ``_``, so lineage alone never rewrites a file). ``delete_column``: a
    boolean source column; true deletes the key. ``partition``: the target's partition column (None: unpartitioned).
    """

    keys: tuple[str, ...]
    order_by: tuple[str, ...] = ()
    compare: tuple[str, ...] | None = None
    delete_column: str | None = None
    partition: str | None = None


@dataclass
class MergeResult:
    version: int | None
    files_read: int = 0
    files_rewritten: int = 0
    files_added: int = 0
    partitions: int = 0
    tasks: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    adds: list[DataFile] = field(default_factory=list)
    removes: list[TableFile] = field(default_factory=list)


def merge(
    storage: Storage,
    target: Snapshot,
    source: list[DataFile],
    source_rel: str,
    spec: MergeSpec,
    schema: pa.Schema,
    *,
    run_id: str,
    max_rows: int,
    app_transactions: Mapping[str, int] | None = None,
    metadata: Mapping[str, Any] | None = None,
    group_rows: int | None = None,
    batch_rows: int | None = None,
) -> MergeResult:
    """Merge the staged ``source`` files (under ``source_rel``) into ``target`` in one commit; see the module doc.

    ``schema`` is the target's full schema (partition column included). Returns the committed version, or the target's
    version when nothing changed.
    """
    if small(target, spec):
        return _merge_small(storage, target, source, source_rel, spec, schema, app_transactions, metadata)
    result = execute(storage, target, source, source_rel, spec, schema, run_id=run_id, max_rows=max_rows,
                     group_rows=group_rows, batch_rows=batch_rows)
    return commit(storage, target, result, spec, schema, app_transactions=app_transactions, metadata=metadata)


# An unpartitioned target up to this many rows is merged by delta-rs in one worker task: measured here
# (bench/merge_threshold.py, 1% changed) delta-rs took 0.22 / 0.56 s for 1M / 3M rows where the distributed path took
# 0.50 / 0.87 s. delta-rs stays faster on larger unpartitioned tables too, but its memory grows with the table (the
# distributed path's does not), so above this size the distributed path is taken.
SMALL_TARGET_ROWS = 3_000_000


def small(target: Snapshot, spec: MergeSpec) -> bool:
    """Is ``target`` merged faster by delta-rs in one process (unpartitioned, at most SMALL_TARGET_ROWS rows)?"""
    return target.exists and spec.partition is None and sum(f.rows for f in target.files) <= SMALL_TARGET_ROWS


def _merge_small(
    storage: Storage, target: Snapshot, source: list[DataFile], source_rel: str, spec: MergeSpec, schema: pa.Schema,
    app_transactions: Mapping[str, int] | None, metadata: Mapping[str, Any] | None,
) -> MergeResult:
    """delta-rs MERGE in one worker task, which also commits it (same app transaction, no retries)."""
    result = MergeResult(version=target.version, partitions=1, tasks=1)
    items = [{"path": f.path, "partition_values": f.partition_values} for f in source if f.rows]
    if not items:
        return result
    kwargs = {"storage": storage, "target": target, "source_rel": source_rel, "spec": spec, "schema": schema,
              "app_transactions": dict(app_transactions or {}),
              "metadata": dict(metadata or {}) | {"operation": "merge (delta-rs)"}}
    [done] = engine.map_items([{"source": items}], merge_in_one_task, fn_kwargs=kwargs)
    assert isinstance(done, CommittedReport)
    result.counts.update(done.counts)
    result.files_read, result.files_rewritten = done.files_read, done.files_removed
    result.files_added = done.files_added
    if result.files_added or result.files_rewritten:
        result.version = table.snapshot(storage, target.ref).version
    return result


def execute(
    storage: Storage,
    target: Snapshot,
    source: list[DataFile],
    source_rel: str,
    spec: MergeSpec,
    schema: pa.Schema,
    *,
    run_id: str,
    max_rows: int,
    group_rows: int | None = None,
    batch_rows: int | None = None,
) -> MergeResult:
    """Plan and run the merge on the workers; nothing is committed (the new files are written, unreferenced).
    ``group_rows`` and ``batch_rows`` (None: GROUP_ROWS, BATCH_ROWS): see :func:`plan` and the module doc."""
    groups = plan(target, source, spec, group_rows=GROUP_ROWS if group_rows is None else group_rows)
    partitions = {json.dumps(g["partition_values"], sort_keys=True) for g in groups}
    result = MergeResult(version=target.version, partitions=len(partitions), tasks=len(groups))
    if not groups:
        return result
    kwargs = {"storage": storage, "target_rel": target.ref.rel, "source_rel": source_rel, "spec": spec,
              "schema": schema, "run_id": run_id, "max_rows": max_rows,
              "batch_rows": BATCH_ROWS if batch_rows is None else batch_rows}
    reports: list[TaskReport] = engine.map_items(groups, merge_group, fn_kwargs=kwargs)
    removed = {path for r in reports for path in r.removed}
    result.adds = [f for r in reports for f in r.added]
    result.removes = [f for f in target.files if f.path in removed]
    result.files_read = sum(r.read for r in reports)
    result.files_rewritten = len(removed)
    result.files_added = len(result.adds)
    for r in reports:
        for name, n in r.counts.items():
            result.counts[name] += n
    return result


def commit(
    storage: Storage,
    target: Snapshot,
    result: MergeResult,
    spec: MergeSpec,
    schema: pa.Schema,
    *,
    app_transactions: Mapping[str, int] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> MergeResult:
    """Commit an executed merge in one version against ``target`` (the version it was planned from); nothing when it
    changed nothing."""
    if not result.adds and not result.removes:
        return result  # nothing changed: no new version
    result.version = table.commit(
        storage,
        target,
        schema=schema,
        adds=result.adds,
        removes=result.removes,
        partition_by=(spec.partition,) if spec.partition else (),
        app_transactions=app_transactions,
        metadata=dict(metadata or {}) | {"operation": "merge", "rewritten": len(result.removes)},
    )
    return result


# A partition whose candidate files hold more rows than this is split into tasks by key range (see the module doc):
# about four of a run's 1M-row files, so a large unpartitioned table is merged by several workers.
GROUP_ROWS = 4_000_000


def plan(target: Snapshot, source: list[DataFile], spec: MergeSpec, *, group_rows: int = GROUP_ROWS
         ) -> list[dict[str, Any]]:
    """Task items: per partition the source touches, its source files and the target files it may affect (same
    partition, overlapping first-key range), from the log and the staged files' statistics alone; a partition whose
    candidates hold more than ``group_rows`` rows gives one item per key range (``key_from``, ``key_to``)."""
    key = spec.keys[0]
    by_partition: dict[str, list[DataFile]] = {}
    for f in source:
        if f.rows:
            by_partition.setdefault(json.dumps(f.partition_values, sort_keys=True), []).append(f)
    groups = []
    for values, files in sorted(by_partition.items()):
        stats = [json.loads(f.stats) for f in files]
        lows = [stat(s.get("minValues", {}).get(key)) for s in stats]
        highs = [stat(s.get("maxValues", {}).get(key)) for s in stats]
        low = None if None in lows else min(lows)
        high = None if None in highs else max(highs)
        partition_values = json.loads(values)
        in_partition = [f for f in target.files if _same_partition(f, partition_values, spec)]
        affected = [f for f in in_partition if overlaps(f, key, low, high)]
        for key_from, key_to, part in _key_ranges(affected, key, group_rows):
            groups.append({
                "partition_values": partition_values,
                "source": [{"path": f.path, "partition_values": f.partition_values} for f in files],
                "key_from": key_from,
                "key_to": key_to,
                # with each file's key range: the task reads a file only if one of its source keys falls in it
                "targets": [ranged_item(f, key) for f in part],
            })
    return groups


def _key_ranges(files: list[TableFile], key: str, group_rows: int) -> list[tuple[Any, Any, list[TableFile]]]:
    """The files split into tasks ``(key_from, key_to, files)``: ranges [key_from, key_to) that cover every key (None:
    unbounded), each holding whole groups of files with overlapping key ranges, about ``group_rows`` rows a task."""
    spans = [bounds(f, key) for f in files]
    if sum(f.rows for f in files) <= group_rows or any(None in b for b in spans):
        return [(None, None, files)]  # small enough, or a file without statistics may hold any key
    overlapping: list[tuple[Any, Any, list[TableFile]]] = []  # (low, high, files), disjoint, in key order
    for (low, high), f in sorted(zip(spans, files, strict=True), key=lambda b: b[0]):
        if overlapping and low <= overlapping[-1][1]:
            last = overlapping[-1]
            overlapping[-1] = (last[0], max(last[1], high), [*last[2], f])
        else:
            overlapping.append((low, high, [f]))
    tasks: list[tuple[Any, list[TableFile]]] = []  # (first low, files)
    for low, _, group in overlapping:
        if tasks and sum(f.rows for f in tasks[-1][1]) < group_rows:
            tasks[-1][1].extend(group)
        else:
            tasks.append((low, list(group)))
    return [(None if i == 0 else low, tasks[i + 1][0] if i + 1 < len(tasks) else None, group)
            for i, (low, group) in enumerate(tasks)]


def _same_partition(f: TableFile, values: dict[str, str | None], spec: MergeSpec) -> bool:
    return spec.partition is None or f.partition_values.get(spec.partition) == values.get(spec.partition)

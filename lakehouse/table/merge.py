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

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa

from lakehouse import engine, table
from lakehouse.storage import Storage
from lakehouse.storage.files import DataFile, DataFileWriter, iter_data_file
from lakehouse.storage.frames import read_files, to_arrow, to_frame, without, write_frame
from lakehouse.table import Snapshot, TableFile

COUNTS = ("inserted", "updated", "deleted", "unchanged", "duplicates", "unmatched_deletes", "null_keys")


@dataclass(frozen=True)
class TaskReport:
    """What one merge task did: how many target files it read, those it rewrote (removed, by path), the files it
    wrote (rewrites and inserts, uncommitted) and its row counts (``COUNTS``)."""

    read: int
    removed: tuple[str, ...]
    added: tuple[DataFile, ...]
    counts: dict[str, int]


@dataclass(frozen=True)
class CommittedReport:
    """What delta-rs's MERGE did in one task (it commits too): its row counts and files read, removed and added."""

    counts: dict[str, int]
    files_read: int
    files_removed: int
    files_added: int


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
    [done] = engine.map_items([{"source": items}], _merge_in_one_task, fn_kwargs=kwargs)
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
    reports: list[TaskReport] = engine.map_items(groups, _merge_partition, fn_kwargs=kwargs)
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
        lows = [_stat(s.get("minValues", {}).get(key)) for s in stats]
        highs = [_stat(s.get("maxValues", {}).get(key)) for s in stats]
        low = None if None in lows else min(lows)
        high = None if None in highs else max(highs)
        partition_values = json.loads(values)
        in_partition = [f for f in target.files if _same_partition(f, partition_values, spec)]
        affected = [f for f in in_partition if _overlaps(f, key, low, high)]
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
    bounds = [_bounds(f, key) for f in files]
    if sum(f.rows for f in files) <= group_rows or any(None in b for b in bounds):
        return [(None, None, files)]  # small enough, or a file without statistics may hold any key
    overlapping: list[tuple[Any, Any, list[TableFile]]] = []  # (low, high, files), disjoint, in key order
    for (low, high), f in sorted(zip(bounds, files, strict=True), key=lambda b: b[0]):
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


def ranged_item(f: TableFile, key: str) -> dict[str, Any]:
    """A file's task item with the range of its ``key`` column (``low``, ``high``), for :func:`may_hold`."""
    low, high = _bounds(f, key)
    return f.item() | {"low": low, "high": high}


def may_hold(item: dict[str, Any], keys: pl.Series) -> bool:
    """Can the file of a :func:`ranged_item` hold one of ``keys`` (its first key column's values)? Only its range is
    consulted: a file without statistics may hold any."""
    if item["low"] is None or item["high"] is None:
        return True
    low, high = (_typed(v, keys.dtype) for v in (item["low"], item["high"]))
    return bool(keys.is_between(low, high).any())


def _same_partition(f: TableFile, values: dict[str, str | None], spec: MergeSpec) -> bool:
    return spec.partition is None or f.partition_values.get(spec.partition) == values.get(spec.partition)


def _stat(value: Any) -> Any:
    """A statistic in one comparable form: dates and times as ISO text (the log gives them typed, staged files as
    JSON text), numbers and text as they are."""
    return value.isoformat() if isinstance(value, dt.date) else value


def _bounds(f: TableFile, key: str) -> tuple[Any, Any]:
    """The file's min and max of ``key`` from the log (None when unknown), in :func:`_stat` form."""
    return _stat(f.mins.get(key)), _stat(f.maxs.get(key))


def _overlaps(f: TableFile, key: str, low: Any, high: Any) -> bool:
    """Can file ``f`` hold a key in [low, high]? Unknown statistics mean it can."""
    f_low, f_high = _bounds(f, key)
    if None in (low, high, f_low, f_high):
        return True
    return bool(f_low <= high and low <= f_high)


# --- worker side -------------------------------------------------------------------------------------------------


def _merge_partition(
    item: dict[str, Any],
    *,
    storage: Storage,
    target_rel: str,
    source_rel: str,
    spec: MergeSpec,
    schema: pa.Schema,
    run_id: str,
    max_rows: int,
    batch_rows: int,
) -> list[TaskReport]:
    keys = list(spec.keys)
    file_schema = without(schema, [spec.partition]) if spec.partition else schema
    data = list(file_schema.names)
    compare = list(spec.compare) if spec.compare is not None else [
        c for c in data if not c.startswith("_") and c not in keys
    ]
    counts = dict.fromkeys(COUNTS, 0)
    # read file by file, each cut to the task's key range: a task holds its share of the source
    share = [_in_range(read_files(storage, source_rel, [f]), keys[0], item) for f in item["source"]]
    latest = _latest_per_key(pl.concat(share, how="vertical_relaxed"), spec, counts)
    deleting = pl.col(spec.delete_column).fill_null(False) if spec.delete_column else pl.lit(False)
    latest = latest.with_columns(deleting.alias("__delete"))
    upserts = latest.filter(~pl.col("__delete")).select(data)
    read, removed, added = 0, list[str](), list[DataFile]()
    matched: list[pl.DataFrame] = []
    # The last rewritten file, left open for the inserts (no extra small file).
    held: DataFileWriter | None = None
    created: list[DataFileWriter] = []  # every writer opened: those not closed are dropped if the task fails
    first = latest.get_column(keys[0])

    def rewrite(f: dict[str, Any]) -> DataFileWriter | None:
        """File ``f`` streamed a batch at a time, written as it goes from its first change on (the batches before it
        are held, up to HELD_BATCHES, then written anyway): its rewrite, or None when nothing in it changed. The
        task holds a few batches of the file, whatever its size."""
        writer: DataFileWriter | None = None
        waiting: list[pa.Table] = []
        changes: list[pl.DataFrame] = []
        for batch in iter_data_file(storage, target_rel, f["path"], batch_rows=batch_rows):
            rows = to_frame(batch).select(data)
            hits = latest.select(*keys, "__delete").join(rows.select(keys), on=keys, how="semi")
            if hits.height:
                matched.append(hits.select(keys))
                deleted = hits.filter(pl.col("__delete")).select(keys)
                candidates = upserts.join(hits.filter(~pl.col("__delete")).select(keys), on=keys, how="semi")
                before = rows.join(candidates.select(keys), on=keys, how="semi")
                changed = _changed(candidates, before, keys, compare, list(spec.order_by))
                counts["deleted"] += deleted.height
                counts["updated"] += changed.height
                counts["unchanged"] += candidates.height - changed.height
                if deleted.height or changed.height:
                    changes.append(changed.select(data))
                    rows = rows.join(pl.concat([deleted, changed.select(keys)]), on=keys, how="anti")
            waiting.append(to_arrow(rows, file_schema))
            if writer is None and (changes or len(waiting) > HELD_BATCHES):
                writer = DataFileWriter(storage, target_rel, file_schema, partition_values=item["partition_values"],
                                        prefix=f"part-{run_id}")
                created.append(writer)
            if writer is not None:
                for table_ in waiting:
                    writer.write(table_)
                waiting.clear()
        if not changes:
            if writer is not None:
                writer.abort()  # every matched row is as it was: the file stays
            return None
        assert writer is not None
        writer.write(to_arrow(pl.concat(changes, how="vertical_relaxed"), file_schema))
        return writer

    try:
        for f in item["targets"]:
            if not may_hold(f, first):
                continue  # no source key in this file's range: not read
            read += 1
            writer = rewrite(f)
            if writer is None:
                continue
            removed.append(f["path"])
            if held is not None:
                added += _closed(held)
            held = writer
        known = pl.concat(matched) if matched else latest.select(keys).clear()
        inserts = upserts.join(known, on=keys, how="anti")
        counts["inserted"] = inserts.height
        counts["unmatched_deletes"] = latest.filter(pl.col("__delete")).join(known, on=keys, how="anti").height
        if held is not None and held.rows + inserts.height <= max_rows:
            held.write(to_arrow(inserts, file_schema))
            inserts = inserts.clear()
        if held is not None:
            added += _closed(held)
    except BaseException:
        for writer in created:
            writer.abort()
        raise
    added += write_frame(storage, target_rel, inserts, file_schema, partition_values=item["partition_values"],
                         prefix=f"part-{run_id}", max_rows=max_rows)
    return [TaskReport(read, tuple(removed), tuple(added), counts)]


# Rows of a target file handled at a time by a merge task (half a row group of the files we write), and how many
# batches without a change it holds before writing the file's rewrite anyway.
BATCH_ROWS = 128 * 1024
HELD_BATCHES = 2


def _closed(writer: DataFileWriter) -> list[DataFile]:
    """A rewritten file, closed: added, unless every row of it was deleted."""
    if not writer.rows:
        writer.abort()
        return []
    return [writer.close()]


def _merge_in_one_task(
    item: dict[str, Any], *, storage: Storage, target: Snapshot, source_rel: str, spec: MergeSpec, schema: pa.Schema,
    app_transactions: dict[str, int], metadata: dict[str, Any],
) -> list[CommittedReport]:
    keys = list(spec.keys)
    counts = dict.fromkeys(COUNTS, 0)
    latest = _latest_per_key(read_files(storage, source_rel, item["source"]), spec, counts)
    data = list(schema.names)
    compare = list(spec.compare) if spec.compare is not None else [
        c for c in data if not c.startswith("_") and c not in keys]
    columns = [*data, spec.delete_column] if spec.delete_column else data
    rows = to_arrow(latest.select(columns), pa.schema([*schema, *(
        [pa.field(spec.delete_column, pa.bool_())] if spec.delete_column else [])]))
    metrics = table.merge_rows(storage, target, rows, keys=spec.keys, compare=compare,
                               newer=[c for c in spec.order_by if c in data], delete_column=spec.delete_column,
                               app_transactions=app_transactions, metadata=metadata)
    counts["inserted"] = metrics.get("num_target_rows_inserted", 0)
    counts["updated"] = metrics.get("num_target_rows_updated", 0)
    counts["deleted"] = metrics.get("num_target_rows_deleted", 0)
    counts["unchanged"] = latest.height - counts["inserted"] - counts["updated"] - counts["deleted"]
    return [CommittedReport(counts, files_read=metrics.get("num_target_files_scanned", 0),
                            files_removed=metrics.get("num_target_files_removed", 0),
                            files_added=metrics.get("num_target_files_added", 0))]


def _in_range(src: pl.DataFrame, key: str, item: dict[str, Any]) -> pl.DataFrame:
    """The source rows whose first key is in the task's range [key_from, key_to); rows without a key go to the first
    task (where they are counted)."""
    key_from, key_to = item.get("key_from"), item.get("key_to")
    dtype = src.schema[key]
    if key_from is not None:
        src = src.filter(pl.col(key) >= _typed(key_from, dtype))
    if key_to is not None:
        below = pl.col(key) < _typed(key_to, dtype)
        src = src.filter((below | pl.col(key).is_null()) if key_from is None else below)
    return src


def _typed(value: Any, dtype: pl.DataType) -> Any:
    """A statistic (JSON value, dates as ISO text) as a value of the key column's type."""
    if dtype == pl.Date and isinstance(value, str):
        return dt.date.fromisoformat(value[:10])
    if dtype == pl.Datetime and isinstance(value, str):
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return pl.Series([value]).cast(dtype)[0]


def _latest_per_key(src: pl.DataFrame, spec: MergeSpec, counts: dict[str, int]) -> pl.DataFrame:
    """One source row per key: the last by ``order_by``, then arrival. Rows without their key match nothing: dropped.
    Both are counted in ``counts`` (``null_keys``, ``duplicates``)."""
    src = src.with_row_index("__seq")
    null_key = pl.any_horizontal(pl.col(k).is_null() for k in spec.keys)
    counts["null_keys"] = src.filter(null_key).height
    src = src.filter(~null_key)
    latest = src.sort([*spec.order_by, "__seq"], maintain_order=True).unique(subset=list(spec.keys), keep="last")
    counts["duplicates"] = src.height - latest.height
    return latest


def _changed(
    candidates: pl.DataFrame, before: pl.DataFrame, keys: list[str], compare: list[str], order_by: list[str]
) -> pl.DataFrame:
    """The source rows among ``candidates`` whose compared values differ from the target's (nulls compare equal) and
    that are not older than it by ``order_by`` (the latest row wins, the target's included)."""
    if not compare:
        return candidates.clear()
    ordered = [c for c in order_by if c in before.columns and c in candidates.columns]
    old = list(dict.fromkeys([*compare, *ordered]))
    joined = candidates.join(before.select(*keys, *old), on=keys, how="inner", suffix="__old")
    differs = pl.any_horizontal(pl.col(c).ne_missing(pl.col(f"{c}__old")) for c in compare)
    # lexicographic "source >= target" over order_by (a null orders first)
    newer = pl.lit(True)
    for c in reversed(ordered):
        source, target = pl.col(c), pl.col(f"{c}__old")
        newer = (source.is_not_null() & (target.is_null() | (source > target))) | (source.eq_missing(target) & newer)
    return candidates.join(joined.filter(differs & newer).select(keys), on=keys, how="semi")


"""MERGE's worker side (see :mod:`lakehouse.table.merge`): one task merges the source rows of a partition or key range
into the target files that can hold their keys, streaming each file; or, for a small unpartitioned target, delta-rs
merges in one task. Tasks report what they wrote and their row counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from lakehouse import table
from lakehouse.storage import Storage
from lakehouse.storage.files import DataFile, DataFileWriter, iter_data_file
from lakehouse.storage.frames import read_files, to_arrow, to_frame, without, write_frame
from lakehouse.table import Snapshot
from lakehouse.table.ranges import may_hold, typed

if TYPE_CHECKING:
    from lakehouse.table.merge import MergeSpec


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


def merge_group(
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


def merge_in_one_task(
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
        src = src.filter(pl.col(key) >= typed(key_from, dtype))
    if key_to is not None:
        below = pl.col(key) < typed(key_to, dtype)
        src = src.filter((below | pl.col(key).is_null()) if key_from is None else below)
    return src


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

"""Which landed files each bronze data file holds, and reading a bronze file's rows of some of them.

Ingestion writes one data file per landed file, whose path is its ``_source_file`` (exact in the file's stats), so
the log alone tells which landed files a bronze table holds. Maintenance compacts a bronze table's small files into
files of many landed files each (named ``compact-...``, committed ``dataChange=false``); before such a commit, it
records which landed files each new file holds in ``_meta.bronze_files`` (one row per compacted file and landed file).
A compacted file in the log therefore always has its rows there. Data files are immutable, so a record never goes
stale: those of files no longer in the table (or of a compaction that lost its commit race) are ignored. A compacted
file with no record (the index table was removed by hand) is read for its ``_source_file`` values instead.

Everything that keys on landed files goes through here: bronze's done-set (:func:`landed`), the rows a silver or
change stage has not processed yet (:func:`new_since`: of a compacted file, only the landed files not seen at the
watermark), and quarantine replay's bronze lines.
"""

from __future__ import annotations

import datetime as dt
import posixpath
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from lakehouse import table
from lakehouse.errors import TableError
from lakehouse.storage import Storage
from lakehouse.storage.files import read_data_file
from lakehouse.storage.frames import read_files
from lakehouse.table import TableFile, TableRef

INDEX = TableRef("_meta", "bronze_files")
INDEX_SCHEMA = pa.schema([
    ("table", pa.string()), ("file", pa.string()), ("source_file", pa.string()), ("run_id", pa.string()),
    ("recorded_at", pa.timestamp("us", tz="UTC")),
])
COMPACTED = "compact"  # the prefix of a compacted file's name (in every layer: maintenance names them)


def compacted(path: str) -> bool:
    """Was this data file written by compaction (many landed files) rather than by ingestion (one)?"""
    return posixpath.basename(path).startswith(f"{COMPACTED}-")


def landed_files(storage: Storage, snap: table.Snapshot) -> dict[str, frozenset[str]]:
    """The landed files each data file of a bronze snapshot holds, by data file path."""
    out: dict[str, frozenset[str]] = {}
    packed = []
    for f in snap.files:
        if compacted(f.path):
            packed.append(f.path)
        else:
            out[f.path] = frozenset({str(f.mins.get("_source_file"))})
    if packed:
        out |= _compacted_files(storage, snap.ref, packed)
    return out


def landed(storage: Storage, snap: table.Snapshot) -> set[str]:
    """Every landed file a bronze snapshot holds."""
    return {p for held in landed_files(storage, snap).values() for p in held}


def _compacted_files(storage: Storage, ref: TableRef, paths: list[str]) -> dict[str, frozenset[str]]:
    found: dict[str, set[str]] = {}
    try:
        ds = table.to_arrow_dataset(storage, INDEX)
    except TableError:  # no compaction recorded yet (or the index was removed): the files say
        ds = None
    if ds is not None:
        rows = ds.to_table(columns=["file", "source_file"],
                           filter=(pc.field("table") == str(ref)) & pc.field("file").isin(paths))
        for file, source in zip(rows.column("file").to_pylist(), rows.column("source_file").to_pylist(), strict=True):
            found.setdefault(file, set()).add(source)
    for path in paths:
        if path not in found:
            column = read_data_file(storage, ref.rel, path, columns=["_source_file"]).column("_source_file")
            found[path] = set(pc.unique(column).to_pylist())
    return {p: frozenset(found[p]) for p in paths}


def record(storage: Storage, ref: TableRef, files: Mapping[str, Collection[str]], run_id: str) -> None:
    """Record the landed files of compacted files of ``ref`` (written, not committed yet): one commit."""
    now = dt.datetime.now(dt.UTC)
    rows = [{"table": str(ref), "file": path, "source_file": source, "run_id": run_id, "recorded_at": now}
            for path, sources in files.items() for source in sorted(sources)]
    if rows:
        table.append_rows(storage, INDEX, pa.Table.from_pylist(rows, schema=INDEX_SCHEMA))


@dataclass(frozen=True)
class NewRows:
    """A bronze data file with rows a stage has not processed yet: all of them, or (a compacted file holding landed
    files processed before) only those of the landed files in ``only``."""

    file: TableFile
    only: tuple[str, ...] | None = None

    @property
    def path(self) -> str:
        return self.file.path

    @property
    def rows(self) -> int:
        """The file's rows (all of them, even when only some are new: the stats say no more)."""
        return self.file.rows

    def item(self) -> dict[str, Any]:
        """What a worker reads with :func:`read_new`."""
        return {"path": self.file.path, "only": list(self.only) if self.only is not None else None}


def new_since(storage: Storage, source: table.Snapshot, mark: int | None) -> list[NewRows]:
    """The rows of bronze ``source`` not in it at version ``mark`` (every row when ``mark`` is None), by data file.

    A file added since is new unless it is a compaction of landed files all present at ``mark``; a compaction of some
    of them (it ran before the stage caught up) is new for the others only."""
    if mark is None:
        return [NewRows(f) for f in source.files]
    then = table.snapshot(storage, source.ref, version=mark)
    seen = {f.path for f in then.files}
    added = [f for f in source.files if f.path not in seen]
    if not any(compacted(f.path) for f in added):
        return [NewRows(f) for f in added]
    done = landed(storage, then)
    holds = landed_files(storage, source)
    out = []
    for f in added:
        new = holds[f.path] - done
        if new == holds[f.path]:
            out.append(NewRows(f))
        elif new:
            out.append(NewRows(f, tuple(sorted(new))))
    return out


def read_new(storage: Storage, source: str, item: dict[str, Any]) -> pl.DataFrame:
    """A bronze file's rows (worker side), those of the landed files ``item["only"]`` names when it names some."""
    rows = read_files(storage, TableRef("bronze", source).rel, [{"path": item["path"], "partition_values": {}}])
    only = item.get("only")
    return rows.filter(pl.col("_source_file").is_in(only)) if only is not None else rows

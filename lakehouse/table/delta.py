"""Delta tables: the one home of ``deltalake``.

The driver reads a table's log (:func:`snapshot`: version, files, partition values, stats) to plan, and commits the
files workers wrote with :func:`commit`: one Delta version per call, carrying the run's app transactions
(watermarks) and metadata. Nothing here reads data files; that is the workers' job.
"""

from __future__ import annotations

import json
import posixpath
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions

from lakehouse.errors import CommitConflict, TableError
from lakehouse.ops import faults
from lakehouse.storage import Storage
from lakehouse.storage.files import DataFile

META_PREFIX = "lakehouse."


@dataclass(frozen=True)
class TableRef:
    """A table addressed as ``layer.name`` and stored at ``<root>/<layer>/<name>``."""

    layer: str
    name: str

    @classmethod
    def parse(cls, text: str) -> TableRef:
        layer, _, name = text.partition(".")
        return cls(layer, name)

    @property
    def rel(self) -> str:
        return f"{self.layer}/{self.name}"

    def __str__(self) -> str:
        return f"{self.layer}.{self.name}"


@dataclass(frozen=True)
class TableFile:
    """A live file of a table as the log describes it (path relative to the table)."""

    path: str
    size: int
    rows: int
    partition_values: dict[str, str | None]
    mins: dict[str, Any] = field(default_factory=dict)
    maxs: dict[str, Any] = field(default_factory=dict)
    added_ms: int = 0  # when it was written (the add action's modificationTime)

    def item(self) -> dict[str, Any]:
        """What a worker task needs to read the file (JSON-serialisable)."""
        return {"path": self.path, "partition_values": self.partition_values}


@dataclass(frozen=True)
class Snapshot:
    """What the log says about a table at one version; ``version`` is None when the table does not exist."""

    ref: TableRef
    version: int | None
    files: tuple[TableFile, ...] = ()
    schema: pa.Schema | None = None
    partition_by: tuple[str, ...] = ()

    @property
    def exists(self) -> bool:
        return self.version is not None

    def files_in(self, partitions: Iterable[tuple[str | None, ...]] | None) -> list[TableFile]:
        """Files of the given partitions (all files when ``partitions`` is None)."""
        if partitions is None:
            return list(self.files)
        wanted = set(partitions)
        return [f for f in self.files if tuple(f.partition_values.get(c) for c in self.partition_by) in wanted]


def open_table(storage: Storage, ref: TableRef, version: int | None = None) -> DeltaTable | None:
    """The table at ``version`` (default the latest), or None when there is no table."""
    try:
        return DeltaTable(storage.uri(ref.rel), version=version, storage_options=storage.delta_options())
    except TableNotFoundError:
        return None


def snapshot(storage: Storage, ref: TableRef, version: int | None = None) -> Snapshot:
    """Read the table's log (never its data) at ``version`` or the latest."""
    dt = open_table(storage, ref, version)
    if dt is None:
        return Snapshot(ref=ref, version=None)
    meta = dt.metadata()
    partition_by = tuple(meta.partition_columns)
    actions = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
    files = tuple(_table_file(a, partition_by) for a in actions)
    schema = pa.schema(dt.schema())
    return Snapshot(ref=ref, version=dt.version(), files=files, schema=schema, partition_by=partition_by)


def _table_file(action: dict[str, Any], partition_by: tuple[str, ...]) -> TableFile:
    mins = {k[4:]: v for k, v in action.items() if k.startswith("min.") and v is not None}
    maxs = {k[4:]: v for k, v in action.items() if k.startswith("max.") and v is not None}
    parts = {c: _partition_str(action.get(f"partition.{c}")) for c in partition_by}
    return TableFile(
        path=action["path"],
        size=int(action["size_bytes"]),
        rows=int(action.get("num_records") or 0),
        partition_values=parts,
        mins=mins,
        maxs=maxs,
        added_ms=_epoch_ms(action.get("modification_time")),
    )


def _epoch_ms(value: Any) -> int:
    if value is None:
        return 0
    return int(value.timestamp() * 1000) if hasattr(value, "timestamp") else int(value)


def _partition_str(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


# How :func:`restore` clears a watermark the restored version did not have (Delta has no action that removes an app
# transaction); read back as None. Not -1: a change stage's watermark of -1 means "reset, apply every event again".
NO_WATERMARK = -2


def txn_version(storage: Storage, ref: TableRef, app_id: str, version: int | None = None) -> int | None:
    """The last version recorded for ``app_id`` in the table (our watermark) at ``version`` (default the latest), or
    None (never set, or cleared by a restore)."""
    return txn_versions(storage, ref, [app_id], version)[app_id]


def txn_versions(
    storage: Storage, ref: TableRef, app_ids: Sequence[str], version: int | None = None
) -> dict[str, int | None]:
    """:func:`txn_version` of each of ``app_ids``, from one read of the log."""
    dt = open_table(storage, ref, version)
    found = {a: None if dt is None else dt.transaction_version(a) for a in app_ids}
    return {a: None if v is None or v == NO_WATERMARK else v for a, v in found.items()}


def commit(
    storage: Storage,
    base: Snapshot,
    *,
    schema: pa.Schema,
    adds: list[DataFile],
    removes: list[TableFile] = (),  # type: ignore[assignment]
    partition_by: tuple[str, ...] = (),
    app_transactions: Mapping[str, int] | None = None,
    metadata: Mapping[str, Any] | None = None,
    data_change: bool = True,
) -> int:
    """Commit ``adds`` and ``removes`` against ``base`` as one new version and return it; ``data_change`` False
    says the commit only rearranges rows the table already holds (compaction).

    The commit is made against the version we planned from, with no blind retries: if another writer got there
    first, :class:`CommitConflict` is raised and the caller re-plans.
    """
    ref = base.ref
    _check_files_exist(storage, ref, adds)
    faults.point(f"{ref}:before_commit")
    now = int(time.time() * 1000)
    add_actions = [
        AddAction(a.path, a.size, a.partition_values, a.modification_time or now, data_change, a.stats) for a in adds
    ]
    props = CommitProperties(
        custom_metadata=commit_metadata(metadata),
        max_commit_retries=0,
        app_transactions=[Transaction(app, int(v)) for app, v in (app_transactions or {}).items()],
    )
    try:
        if not base.exists:
            create_table_with_add_actions(
                storage.uri(ref.rel),
                _delta_schema(schema),
                add_actions,
                mode="error",
                partition_by=list(partition_by) or None,
                storage_options=storage.delta_options(),
                commit_properties=props,
            )
            faults.point(f"{ref}:after_commit")
            return 0
        dt = open_table(storage, ref, base.version)
        assert dt is not None
        remove_actions = [RemoveAction(f.path, data_change, now, f.size, f.partition_values) for f in removes]
        dt.create_write_transaction(
            [*add_actions, *remove_actions],
            mode="append",
            schema=schema,
            partition_by=list(base.partition_by) or None,
            commit_properties=props,
        )
    except CommitFailedError as e:
        raise CommitConflict(f"concurrent commit after version {base.version}: {e}", table=str(ref)) from e
    except Exception as e:
        if "already exists" in str(e).lower():
            raise CommitConflict(f"table was created concurrently: {e}", table=str(ref)) from e
        raise TableError(f"commit failed: {e}", table=str(ref)) from e
    faults.point(f"{ref}:after_commit")
    latest = open_table(storage, ref)
    assert latest is not None
    return latest.version()


def merge_rows(
    storage: Storage,
    base: Snapshot,
    rows: pa.Table,
    *,
    keys: tuple[str, ...],
    compare: list[str],
    newer: list[str],
    delete_column: str | None,
    app_transactions: Mapping[str, int] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """delta-rs MERGE of ``rows`` (one per key) into the table at ``base``'s version, in this process, committed with
    no retries (a concurrent commit raises :class:`CommitConflict`). A matched row is deleted when ``delete_column``
    is true, updated when a ``compare`` column differs and its ``newer`` columns are not older; a new key is inserted
    unless it is a delete. Returns delta-rs' counts. Used for small targets (see ``lakehouse.table.merge``)."""
    ref = base.ref
    dt = open_table(storage, ref, base.version)
    if dt is None:
        raise TableError("table does not exist", table=str(ref))
    faults.point(f"{ref}:before_commit")
    props = CommitProperties(
        custom_metadata=commit_metadata(metadata),
        max_commit_retries=0,
        app_transactions=[Transaction(app, int(v)) for app, v in (app_transactions or {}).items()],
    )
    on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
    differs = " OR ".join(f"(t.`{c}` IS DISTINCT FROM s.`{c}`)" for c in compare) or "FALSE"
    order = "TRUE"
    for c in reversed(newer):  # lexicographic: s >= t over the newer columns, a null ordering first
        order = (f"((s.`{c}` IS NOT NULL AND (t.`{c}` IS NULL OR s.`{c}` > t.`{c}`)) OR "
                 f"(s.`{c}` IS NOT DISTINCT FROM t.`{c}` AND {order}))")
    keep = f"(s.`{delete_column}` IS NOT TRUE)" if delete_column else "TRUE"
    builder = dt.merge(rows, predicate=on, source_alias="s", target_alias="t", commit_properties=props)
    if delete_column:
        builder = builder.when_matched_delete(predicate=f"s.`{delete_column}` IS TRUE")
    builder = builder.when_matched_update(
        updates={f"`{c}`": f"s.`{c}`" for c in rows.column_names if c != delete_column},
        predicate=f"{keep} AND ({differs}) AND {order}",
    ).when_not_matched_insert(
        updates={f"`{c}`": f"s.`{c}`" for c in rows.column_names if c != delete_column}, predicate=keep
    )
    try:
        metrics = builder.execute()
    except CommitFailedError as e:
        raise CommitConflict(f"concurrent commit after version {base.version}: {e}", table=str(ref)) from e
    faults.point(f"{ref}:after_commit")
    return {k: int(v) for k, v in metrics.items() if isinstance(v, int)}


def add_columns(storage: Storage, base: Snapshot, fields: list[pa.Field], *, run_id: str) -> Snapshot:
    """Widen the table's schema by ``fields`` (nullable; existing rows read them as null) in one version made against
    ``base`` by run ``run_id``, and return the snapshot after it. A concurrent commit raises :class:`CommitConflict`."""
    from deltalake import Field

    dt = open_table(storage, base.ref, base.version)
    assert dt is not None
    delta_fields = [Field(f.name, _delta_schema(pa.schema([f])).fields[0].type, nullable=True) for f in fields]
    props = CommitProperties(max_commit_retries=0, custom_metadata={f"{META_PREFIX}stage": "add_columns",
                                                                     f"{META_PREFIX}run_id": run_id})
    try:
        dt.alter.add_columns(delta_fields, commit_properties=props)
    except CommitFailedError as e:
        raise CommitConflict(f"concurrent commit after version {base.version}: {e}", table=str(base.ref)) from e
    assert base.version is not None
    # The version we just made, not the latest: a commit planned from it must conflict with anyone who came after.
    return snapshot(storage, base.ref, version=base.version + 1)


def _delta_schema(schema: pa.Schema) -> Any:
    from deltalake import Schema

    return Schema.from_arrow(schema)


def commit_metadata(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    """Our metadata as a commit carries it: each key under the ``lakehouse.`` prefix, each value as text (JSON when
    it is not a string)."""
    return {f"{META_PREFIX}{k}": v if isinstance(v, str) else json.dumps(v, default=str)
            for k, v in (metadata or {}).items()}


def _check_files_exist(storage: Storage, ref: TableRef, adds: list[DataFile]) -> None:
    # delta-rs accepts a commit naming a missing file, after which every read fails: check first.
    if not adds:
        return
    fs = storage.filesystem()
    infos = fs.get_file_info([storage.fs_path(f"{ref.rel}/{a.path}") for a in adds])
    missing = [a.path for a, i in zip(adds, infos, strict=True) if i.type == pafs.FileType.NotFound]
    if missing:
        raise TableError(f"{len(missing)} written files are missing, e.g. {missing[0]}", table=str(ref))


_appending = threading.Lock()


def append_rows(storage: Storage, ref: TableRef, rows: pa.Table) -> None:
    """Append a small driver-side table (run records, rejected files); data tables never come through here. One at a
    time in a process: stages running at once may both be first to write a ``_meta`` table, and two creations of one
    table race (appends to an existing one are retried by delta-rs)."""
    with _appending:
        write_deltalake(
            storage.uri(ref.rel),
            rows,
            mode="append",
            schema_mode="merge",
            storage_options=storage.delta_options(),
        )


def to_arrow_dataset(storage: Storage, ref: TableRef, version: int | None = None) -> Any:
    """A pyarrow dataset over the table's current files (for DuckDB and tests; readers only)."""
    dt = open_table(storage, ref, version)
    if dt is None:
        raise TableError("table does not exist", table=str(ref))
    return dt.to_pyarrow_dataset()


def list_tables(storage: Storage, layers: Iterable[str]) -> list[TableRef]:
    """Tables found under the given layers (a directory holding a ``_delta_log``)."""
    fs = storage.filesystem()
    candidates = []
    for layer in layers:
        for info in fs.get_file_info(pafs.FileSelector(storage.fs_path(layer), allow_not_found=True)):
            if info.type == pafs.FileType.Directory:
                candidates.append(TableRef(layer, info.base_name))
    logs = fs.get_file_info([storage.fs_path(f"{r.rel}/_delta_log") for r in candidates])
    found = [r for r, log in zip(candidates, logs, strict=True) if log.type == pafs.FileType.Directory]
    return sorted(found, key=str)


LOG_DIR = "_delta_log"
ACTIONS = ("add", "remove", "cdc")  # the log actions that name data files


def referenced_paths(storage: Storage, ref: TableRef) -> set[str]:
    """Every data file any version still in the log refers to (added or removed), relative to the table.

    Read from the log's commit files and checkpoints directly: a file removed at some version is still part of the
    older versions a reader can time-travel to, so it is referenced too. Raises :class:`TableError` on a log entry it
    does not understand (a sweep must then not run).
    """
    fs = storage.filesystem()
    log_dir = storage.fs_path(f"{ref.rel}/{LOG_DIR}")
    entries = fs.get_file_info(pafs.FileSelector(log_dir, recursive=False, allow_not_found=True))
    paths: set[str] = set()
    for info in entries:
        name = posixpath.basename(info.path)
        if info.type != pafs.FileType.File or name.startswith((".", "_")) or name.endswith(".crc"):
            continue
        if ".checkpoint" in name and name.endswith(".parquet"):
            data = pq.read_table(storage.fs_path(f"{ref.rel}/{LOG_DIR}/{name}"), filesystem=fs)
            for action in ACTIONS:
                if action in data.column_names:
                    paths.update(p for p in _struct_field(data.column(action), "path") if p)
        elif name.endswith(".json") and ".checkpoint" not in name:
            try:
                with fs.open_input_stream(info.path) as f:
                    lines = f.read().decode().splitlines()
            except FileNotFoundError:  # expired and cleaned up since the listing: a checkpoint covers it
                continue
            for text in lines:
                entry: dict[str, Any] = json.loads(text) if text.strip() else {}
                paths.update(entry[kind]["path"] for kind in ACTIONS if kind in entry)
        else:
            raise TableError(f"log entry {name} is of a kind this engine does not read", table=str(ref))
    return {_relative(p, storage.uri(ref.rel)) for p in paths}


def _struct_field(column: pa.ChunkedArray, field_name: str) -> list[str | None]:
    return [row[field_name] if row else None for row in column.to_pylist()]


def _relative(path: str, table_uri: str) -> str:
    """A log path (relative and URL-encoded, or an absolute URI) as a plain path relative to the table."""
    path = urllib.parse.unquote(path)
    for prefix in (table_uri.rstrip("/") + "/", "file://" + table_uri.rstrip("/") + "/"):
        if path.startswith(prefix):
            return path[len(prefix):]
    return path


@dataclass(frozen=True)
class Orphan:
    path: str  # relative to the table
    size: int
    age_seconds: float


def orphans(storage: Storage, ref: TableRef, *, min_age_seconds: float, now: float | None = None) -> list[Orphan]:
    """Data files under the table's directory that no version in the log refers to and that are older than
    ``min_age_seconds`` (younger ones may belong to a writer that has not committed yet)."""
    now = time.time() if now is None else now
    referenced = referenced_paths(storage, ref)
    fs = storage.filesystem()
    base = storage.fs_path(ref.rel)
    found = []
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)):
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(base) + 1:]
        name = posixpath.basename(rel)
        if rel.startswith(LOG_DIR + "/") or (name.startswith(".") and not name.endswith(".tmp")):
            continue  # the log, and hidden files other than a killed writer's half-written ".<file>.tmp"
        age = now - (info.mtime.timestamp() if info.mtime else now)
        if rel not in referenced and age >= min_age_seconds:
            found.append(Orphan(path=rel, size=int(info.size or 0), age_seconds=age))
    return sorted(found, key=lambda o: o.path)


def delete_files(storage: Storage, ref: TableRef, paths: Iterable[str]) -> None:
    fs = storage.filesystem()
    for p in paths:
        try:
            fs.delete_file(storage.fs_path(f"{ref.rel}/{p}"))
        except FileNotFoundError:  # a concurrent sweep got there first
            pass

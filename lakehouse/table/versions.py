"""A table's versions: what each commit says (:func:`history`: when, which operation, which run and stage, the
inputs it read), the watermarks a range of versions set, and :func:`restore`, which makes an older version current
again as a new one (what ``lakehouse rollback`` does per table). Reads the log only."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from deltalake import CommitProperties, Transaction
from deltalake.exceptions import CommitFailedError
from deltalake.transaction import AddAction, RemoveAction

from lakehouse.errors import CommitConflict, TableError
from lakehouse.ops import faults
from lakehouse.storage import Storage
from lakehouse.table.delta import (
    LOG_DIR,
    META_PREFIX,
    NO_WATERMARK,
    TableRef,
    commit_metadata,
    open_table,
    snapshot,
    txn_version,
)


@dataclass(frozen=True)
class Commit:
    """One version of a table as its commit info tells it: when, which operation, and the metadata our commits carry
    (``run_id``, ``stage``, ``inputs``... without the ``lakehouse.`` prefix)."""

    version: int
    timestamp_ms: int
    operation: str
    info: dict[str, str]

    @property
    def run_id(self) -> str | None:
        return self.info.get("run_id")

    @property
    def inputs(self) -> dict[str, int]:
        """The versions of the tables the commit's stage read (``silver.orders`` -> 7), as its metadata says."""
        try:
            found = json.loads(self.info.get("inputs") or "{}")
        except ValueError:
            return {}
        return {k: v for k, v in found.items() if isinstance(v, int)} if isinstance(found, dict) else {}


def history(storage: Storage, ref: TableRef, *, since: int | None = None) -> list[Commit]:
    """Every version of the table still in its log (after version ``since``, when given), oldest first: the commit
    infos only, no data file is read."""
    dt = open_table(storage, ref)
    if dt is None or (since is not None and dt.version() <= since):
        return []
    limit = None if since is None else dt.version() - since
    commits = [
        Commit(version=int(h["version"]), timestamp_ms=int(h.get("timestamp") or 0),
               operation=str(h.get("operation") or ""),
               info={k[len(META_PREFIX):]: str(v) for k, v in h.items() if k.startswith(META_PREFIX)})
        for h in dt.history(limit)
    ]
    return sorted((c for c in commits if since is None or c.version > since), key=lambda c: c.version)


def commits_since(storage: Storage, ref: TableRef, version: int) -> list[dict[str, str]]:
    """The ``metadata`` our commits after ``version`` carried (keys without the ``lakehouse.`` prefix), newest first."""
    return [c.info for c in reversed(history(storage, ref, since=version))]


def watermarks_changed(storage: Storage, ref: TableRef, since: int | None, until: int) -> dict[str, int | None]:
    """The app transactions (watermarks) set by versions ``since`` + 1 .. ``until``, each with the value it had at
    ``since`` (None where it had none; ``since`` None: the table did not exist). Read from those versions' commit
    files: Delta keeps no index of app transactions by version."""
    fs = storage.filesystem()
    apps: set[str] = set()
    for v in range((-1 if since is None else since) + 1, until + 1):
        path = storage.fs_path(f"{ref.rel}/{LOG_DIR}/{v:020d}.json")
        try:
            with fs.open_input_stream(path) as f:
                lines = f.read().decode().splitlines()
        except FileNotFoundError as e:
            raise TableError(f"the log of version {v} is gone (expired by log retention), so the watermarks it set "
                             "are not known", table=str(ref)) from e
        apps.update(json.loads(t)["txn"]["appId"] for t in lines if t.strip().startswith('{"txn"'))
    return {app: None if since is None else txn_version(storage, ref, app, since) for app in sorted(apps)}


def restore(
    storage: Storage, ref: TableRef, *, to: int | None, expect: int, metadata: Mapping[str, Any]
) -> int:
    """Make the table's content, schema and watermarks those of version ``to`` again, as one new version made against
    ``expect`` (a concurrent commit raises :class:`CommitConflict`; history stays for time travel). ``to`` None
    empties the table (the versions undone created it). Returns the new version."""
    marks = watermarks_changed(storage, ref, to, expect)
    props = CommitProperties(
        custom_metadata=commit_metadata(metadata),
        max_commit_retries=0,
        app_transactions=[Transaction(app, NO_WATERMARK if v is None else v) for app, v in marks.items()],
    )
    dt = open_table(storage, ref, expect)
    if dt is None:
        raise TableError("table does not exist", table=str(ref))
    faults.point(f"{ref}:before_commit")
    try:
        if to is None:
            now = int(time.time() * 1000)
            files = snapshot(storage, ref, expect).files
            removes: list[AddAction | RemoveAction] = [
                RemoveAction(f.path, True, now, f.size, f.partition_values) for f in files]
            dt.create_write_transaction(removes, mode="append", schema=pa.schema(dt.schema()),
                                        partition_by=list(dt.metadata().partition_columns) or None,
                                        commit_properties=props)
        else:
            dt.restore(to, commit_properties=props)
    except CommitFailedError as e:
        raise CommitConflict(f"concurrent commit after version {expect}: {e}", table=str(ref)) from e
    except Exception as e:
        raise TableError(f"could not restore version {to}: {e}", table=str(ref)) from e
    faults.point(f"{ref}:after_commit")
    return expect + 1

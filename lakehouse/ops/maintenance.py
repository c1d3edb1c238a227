"""Maintenance: remove what attempts that never committed left on storage.

A run that crashes, is killed, or loses a commit race leaves files no Delta version refers to: data files written
into a table's directory, and its private ``_staging/<run_id>`` directory. Readers never see them (they read the
log), but they take space. :func:`sweep` deletes them once they are older than the retention, which must be longer
than the longest run: a younger unreferenced file may belong to a run still in progress. Files that some version in
the log refers to, including versions since replaced, are never touched, so time travel keeps working.
"""

from __future__ import annotations

import datetime as dt
import logging
import posixpath
import time
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from lakehouse import table
from lakehouse.storage import Storage

log = logging.getLogger("lakehouse")

LAYERS = ("bronze", "silver", "gold", "quarantine", "_meta")
STAGING = "_staging"


@dataclass
class SweepReport:
    files: dict[str, list[str]] = field(default_factory=dict)  # table -> orphan paths removed (or found)
    bytes: int = 0
    staging: list[str] = field(default_factory=list)  # run ids whose staging directories were removed

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.files.values())


def sweep(storage: Storage, *, retention_seconds: float, dry_run: bool = False) -> SweepReport:
    """Delete orphaned data files of every table, and staging directories of runs older than the retention."""
    now = time.time()
    report = SweepReport()
    for ref in table.list_tables(storage, LAYERS):
        found = table.orphans(storage, ref, min_age_seconds=retention_seconds, now=now)
        if not found:
            continue
        report.files[str(ref)] = [o.path for o in found]
        report.bytes += sum(o.size for o in found)
        if not dry_run:
            table.delete_files(storage, ref, (o.path for o in found))
        log.info("%s: %s %d orphaned files", ref, "found" if dry_run else "removed", len(found))
    for run_id, age in _staging_runs(storage, now):
        if age >= retention_seconds:
            report.staging.append(run_id)
            if not dry_run:
                storage.delete_dir(f"{STAGING}/{run_id}")
    return report


def _staging_runs(storage: Storage, now: float) -> list[tuple[str, float]]:
    """Staging directories by run id, with their age: since the newest file in them was written (a long run keeps
    writing), else since the run started (its id's timestamp)."""
    fs = storage.filesystem()
    found = []
    for info in fs.get_file_info(pafs.FileSelector(storage.fs_path(STAGING), allow_not_found=True)):
        if info.type != pafs.FileType.Directory:
            continue
        run_id = posixpath.basename(info.path)
        inside = fs.get_file_info(pafs.FileSelector(info.path, recursive=True, allow_not_found=True))
        stamps = [i.mtime.timestamp() for i in inside if i.type == pafs.FileType.File and i.mtime]
        try:
            stamps.append(dt.datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC).timestamp())
        except ValueError:
            stamps.append(info.mtime.timestamp() if info.mtime else now)
        found.append((run_id, now - max(stamps)))
    return found

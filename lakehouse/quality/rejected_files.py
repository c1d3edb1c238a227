"""``_meta.rejected_files``: landed files that could not be read at all, with the reason, so nothing is lost quietly.

A corrupt, empty or unreadable landed file does not stop the batch (unless ``Settings.bad_files`` is ``fail``): it is
recorded here, once, with its path, size, modification time, the error and the run. A file is known by path, size
and modification time, so it is not read again until it changes (a corrected file landed over it is ingested by the
next run). The raw file itself is never touched.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa

from lakehouse import table
from lakehouse.errors import TableError
from lakehouse.storage import Storage
from lakehouse.table import TableRef

REF = TableRef("_meta", "rejected_files")
SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("path", pa.string()),
        ("size", pa.int64()),
        ("mtime_ms", pa.int64()),
        ("error", pa.string()),
        ("run_id", pa.string()),
        ("rejected_at", pa.timestamp("us", tz="UTC")),
    ]
)


def known(storage: Storage, source: str) -> set[tuple[str, int, int]]:
    """(path, size, mtime_ms) of the files of ``source`` already rejected."""
    try:
        found = table.to_arrow_dataset(storage, REF)
    except TableError:  # nothing rejected yet
        return set()
    rows = found.to_table(columns=["source", "path", "size", "mtime_ms"]).to_pylist()
    return {(r["path"], r["size"], r["mtime_ms"]) for r in rows if r["source"] == source}


def record(storage: Storage, source: str, files: list[dict[str, Any]], run_id: str) -> None:
    """Append the rejected files (``path``, ``size``, ``mtime_ms``, ``error``) of one run (one commit)."""
    seen = known(storage, source) if files else set()
    # A run that lost a race may have read a file the winner has just recorded: record each file once.
    files = [f for f in files if (f["path"], f["size"], f["mtime_ms"]) not in seen]
    if not files:
        return
    now = dt.datetime.now(dt.UTC)
    rows = [
        {"source": source, "path": f["path"], "size": f["size"], "mtime_ms": f["mtime_ms"], "error": f["error"],
         "run_id": run_id, "rejected_at": now}
        for f in files
    ]
    table.append_rows(storage, REF, pa.Table.from_pylist(rows, schema=SCHEMA))

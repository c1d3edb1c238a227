"""Quarantine: rejected rows with the reason, kept in ``quarantine.<table>`` so nothing is ever lost.

Each quarantine file holds the rejects of one landed file at one stage, and says so in its exact stats
(``stage``, ``_source_file``): the log alone tells which landed files already have their rejects recorded, so a
rerun after a crash between the quarantine commit and the data commit adds nothing twice, and a full refresh
replaces the silver-stage records instead of repeating them.

One record per rejected row: the stage that rejected it (``bronze``: the line could not be parsed; ``silver``: a
type or rule check failed), the first failed check and its column and value, every failure as JSON, the row itself
(its raw text, or its original string values as JSON), where it came from and the run that rejected it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from lakehouse import table
from lakehouse.files import DataFile, write_data_file
from lakehouse.storage import Storage
from lakehouse.table import TableFile, TableRef

SCHEMA = pa.schema(
    [
        ("stage", pa.string()),
        ("check", pa.string()),
        ("column", pa.string()),
        ("value", pa.string()),
        ("failures", pa.string()),
        ("row", pa.string()),
        ("_source_file", pa.string()),
        ("_source_line", pa.int64()),
        ("_run_id", pa.string()),
        ("_quarantined_at", pa.timestamp("us", tz="UTC")),
    ]
)


def ref(table: str) -> TableRef:
    return TableRef("quarantine", table)


def records(
    *,
    stage: str,
    checks: list[str],
    columns: list[str | None],
    values: list[str | None],
    failures: list[str],
    rows: list[str],
    source_files: list[str],
    source_lines: list[int],
    run_id: str,
) -> pa.Table:
    n = len(rows)
    now = dt.datetime.now(dt.UTC)
    return pa.table(
        {
            "stage": [stage] * n,
            "check": checks,
            "column": columns,
            "value": values,
            "failures": failures,
            "row": rows,
            "_source_file": source_files,
            "_source_line": source_lines,
            "_run_id": [run_id] * n,
            "_quarantined_at": [now] * n,
        },
        schema=SCHEMA,
    )


def write(storage: Storage, name: str, rows: pa.Table, *, stage: str, source_file: str, run_id: str) -> DataFile:
    """Write the rejects of one landed file at one stage into ``quarantine.<name>`` (uncommitted)."""
    constant = {"stage": stage, "_source_file": source_file}
    return write_data_file(storage, ref(name).rel, rows, prefix=f"part-{run_id}", constant=constant)


def commit(
    storage: Storage, name: str, files: list[DataFile], *, stage: str, replace: bool, metadata: Mapping[str, Any]
) -> int | None:
    """Commit rejects of ``stage``: skip landed files already recorded, or with ``replace`` swap every earlier file
    of that stage for ``files``. Returns the version, or None when there was nothing to commit."""
    snap = table.snapshot(storage, ref(name))
    earlier = [f for f in snap.files if _stage(f) == stage]
    if replace:
        removes = earlier
    else:
        removes = []
        done = {f.mins.get("_source_file") for f in earlier}
        files = [f for f in files if _source(f) not in done]
    if not files and not removes:
        return None
    return table.commit(storage, snap, schema=SCHEMA, adds=files, removes=removes, metadata=metadata)


def _stage(f: TableFile) -> str | None:
    return f.mins.get("stage") if f.mins.get("stage") == f.maxs.get("stage") else None


def _source(f: DataFile) -> str | None:
    return json.loads(f.stats).get("minValues", {}).get("_source_file")

"""Quarantine: rejected rows with the reason, kept in ``quarantine.<table>`` so nothing is ever lost.

Each quarantine file holds the rejects of one landed file at one stage, and says so in its exact stats
(``stage``, ``_source_file``): the log alone tells which landed files already have their rejects recorded, so a
rerun after a crash between the quarantine commit and the data commit adds nothing twice, and a full refresh
replaces the silver-stage records instead of repeating them.

Rows held back as late (check ``late_arrival``, see ``Settings.lookback``) leave quarantine when a backfill
of their month takes them into silver (:func:`release_late`, committed after the silver commit).

One record per rejected row: the stage that rejected it (``bronze``: the line could not be parsed; ``silver``: a
type or rule check failed), the first failed check and its column and value, every failure as JSON, the row itself
(its raw text, or its original string values as JSON), where it came from and the run that rejected it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse import engine, table
from lakehouse.storage import Storage
from lakehouse.storage.files import DataFile, read_data_file, write_data_file
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


def by_landed_file(records: pa.Table) -> list[pa.Table]:
    """Records split by landed file (``_source_file``), in order of first appearance: a quarantine file holds one
    landed file's rejects at one stage, which :func:`commit` and replay key on."""
    sources = records.column("_source_file")
    if pc.count_distinct(sources).as_py() <= 1:
        return [records] if records.num_rows else []
    return [records.filter(pc.equal(sources, s)) for s in pc.unique(sources).to_pylist()]


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
    earlier = [f for f in snap.files if stage_of(f) == stage]
    if replace:
        removes = earlier
    else:
        removes = []
        done = {f.mins.get("_source_file") for f in earlier}
        files = [f for f in files if _source(f) not in done]
    if not files and not removes:
        return None
    return table.commit(storage, snap, schema=SCHEMA, adds=files, removes=removes, metadata=metadata)


def stage_of(f: TableFile) -> str | None:
    """The stage whose rejects ``f`` holds (each file holds one stage's), from the log's stats."""
    return f.mins.get("stage") if f.mins.get("stage") == f.maxs.get("stage") else None


def _source(f: DataFile) -> str | None:
    return json.loads(f.stats).get("minValues", {}).get("_source_file")


LATE = "late_arrival"


def release_late(storage: Storage, name: str, months: tuple[str, str], *, run_id: str) -> int:
    """Remove from ``quarantine.<name>`` the rows held as late (check ``late_arrival``) whose month a backfill has
    just taken into silver; returns how many. Each affected file is rewritten on a worker without those rows, in one
    commit; files with no late rows are not read."""
    snap = table.snapshot(storage, ref(name))
    late = [f for f in snap.files if stage_of(f) == "silver" and _may_hold_late(f)]
    if not late:
        return 0
    kwargs = {"storage": storage, "name": name, "months": list(months), "run_id": run_id}
    done: list[Released] = engine.map_items([f.item() for f in late], _without_late, fn_kwargs=kwargs)
    released = sum(m.rows for m in done)
    if not released:
        return 0
    rewritten = {m.path for m in done if m.rows}
    adds = [m.file for m in done if m.rows and m.file is not None]
    removes = [f for f in late if f.path in rewritten]
    table.commit(storage, snap, schema=SCHEMA, adds=adds, removes=removes,
                 metadata={"run_id": run_id, "stage": "backfill", "released_late": released})
    return released


def _may_hold_late(f: TableFile) -> bool:
    low, high = f.mins.get("check"), f.maxs.get("check")
    return low is None or high is None or (low <= LATE + "\uffff" and high >= LATE)


@dataclass(frozen=True)
class Released:
    """Late rows released from one quarantine file: how many, and the file rewritten without them (None when none
    is left, or nothing was released)."""

    path: str
    rows: int
    file: DataFile | None


def _without_late(
    item: dict[str, Any], *, storage: Storage, name: str, months: list[str], run_id: str
) -> list[Released]:
    rows = read_data_file(storage, ref(name).rel, item["path"])
    month = pc.utf8_slice_codeunits(pc.fill_null(rows.column("value"), ""), 0, 7)
    late = pc.and_(
        pc.starts_with(rows.column("check"), LATE),
        pc.and_(pc.greater_equal(month, months[0][:7]), pc.less_equal(month, months[1][:7])),
    )
    late = pc.fill_null(late, False)
    released = int(pc.sum(late).as_py() or 0)
    kept = rows.filter(pc.invert(late))
    written = None
    if released and kept.num_rows:
        source = kept.column("_source_file")[0].as_py()
        written = write(storage, name, kept, stage="silver", source_file=source, run_id=run_id)
    return [Released(item["path"], released, written)]

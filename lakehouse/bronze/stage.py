"""Bronze: land raw files as they are, plus lineage, incrementally and exactly once per file.

Plan (driver): the landed files of a source, minus those the bronze table already holds (read from the log: every
data file ingestion writes comes from one landed file and carries its path in exact ``_source_file`` stats; those
of a compacted file are recorded, see :mod:`lakehouse.bronze.landed`). Execute (Ray
workers): one task per landed file reads it with every value as a string, keeps malformed lines apart with their
line number, and writes Parquet into the bronze table (and the quarantine table). Commit (driver): one version.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from lakehouse import engine, table
from lakehouse.bronze import landed
from lakehouse.bronze.read import DECLARED, file_format, read_landed
from lakehouse.errors import SchemaMismatch, SourceFileError
from lakehouse.quality import checks, quarantine, rejected_files
from lakehouse.running.context import RunContext, StageResult
from lakehouse.spec import Source
from lakehouse.storage import Storage
from lakehouse.storage.files import DataFile, write_data_file
from lakehouse.table import TableRef

LINEAGE = pa.schema(
    [
        ("_source_file", pa.string()),
        ("_source_line", pa.int64()),
        ("_ingested_at", pa.timestamp("us", tz="UTC")),
        ("_run_id", pa.string()),
    ]
)
log = logging.getLogger("lakehouse")


@dataclass(frozen=True)
class Ingested:
    """A landed file written into bronze (uncommitted): its data file, its rows as landed (malformed lines included),
    its data columns in file order, and the quarantine file of its malformed lines, if it had any."""

    landed: str
    file: DataFile
    raw_rows: int
    columns: tuple[str, ...]
    quarantined: DataFile | None = None


@dataclass(frozen=True)
class Rejected:
    """A landed file that could not be read at all (``Settings.bad_files == "reject"``), as
    ``_meta.rejected_files`` records it."""

    path: str
    size: int
    mtime_ms: int
    error: str


def ref(source: str) -> TableRef:
    return TableRef("bronze", source)


def app_id(source: str) -> str:
    """The bronze table's app transaction: how many landed files it holds (it only grows, one commit per batch)."""
    return f"lakehouse/bronze.{source}"



def pending_files(
    storage: Storage, snap: table.Snapshot, rejected: Collection[tuple[str, int, int]] = (), *,
    source: Source | None = None, done: Collection[str] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Landed files of the bronze table's source not in ``snap`` yet and not rejected as they are now (same size
    and modification time), by path (the order they are read and ranked in), and the landed files skipped because
    their extension names no format we read (a source that declares its format reads every file as that). ``done``:
    the landed files ``snap`` holds, when the caller has them already."""
    source = source or Source(snap.ref.name)
    done = landed.landed(storage, snap) if done is None else done
    arrived = sorted(storage.list_files(source.raw_dir), key=lambda f: f.path)

    def fmt(path: str) -> str | None:
        return DECLARED[source.format] if source.format else file_format(path)

    pending = [
        {"path": f.path, "size": f.size, "mtime_ms": f.mtime_ms, "format": fmt(f.path)}
        for f in arrived
        if f.path not in done and fmt(f.path) is not None and (f.path, f.size, f.mtime_ms) not in rejected
    ]
    return pending, [f.path for f in arrived if fmt(f.path) is None]


def ingest(ctx: RunContext, declared: Source | str, required: Collection[str] = ()) -> StageResult:
    """Ingest every pending landed file of source ``declared`` into ``bronze.<name>`` in one commit. ``required`` are
    the columns the silver models built from it need (a file without one cannot go further). In a change-event source
    a ``null`` JSON line (Kafka's tombstone after a delete) is no record rather than a malformed one."""
    declared = Source(declared) if isinstance(declared, str) else declared
    source = declared.name
    result = StageResult(table=str(ref(source)))
    storage = ctx.storage
    base = table.snapshot(storage, ref(source))
    done = landed.landed(storage, base)
    pending, unknown = pending_files(storage, base, rejected_files.known(storage, source), source=declared, done=done)
    ingested = len(done)
    result.inputs = {f"raw.{source}": ingested}
    result.version = base.version
    result.files_pending = len(pending)
    if pending:
        result.pending_seconds = max(0.0, ctx.started_at.timestamp() - min(f["mtime_ms"] for f in pending) / 1000)
    lag = ctx.settings.max_ingest_lag_seconds
    threshold = lag.get(source, lag.get("*"))
    if threshold is not None:
        action = checks.action_of(ctx.settings.check_actions, source, "ingest_lag")
        result.checks.append(checks.ingest_lag(source, len(pending), result.pending_seconds, threshold, action))
    note = ""
    if unknown:
        note = f"ignored {len(unknown)} landed file(s) of unknown format, e.g. {unknown[0]}"
        log.warning("%s: %s", result.table, note)
    if not pending:
        return result.finish("skipped", "; ".join(filter(None, ["no new files", note])))
    # A lag check set to fail fails the run after this ingest commits: refusing to ingest would only grow the lag.
    expected = data_columns(base.schema) if base.exists else None
    evolve = ctx.settings.new_columns.get(source, "fail") == "evolve"
    kwargs = {
        "storage": storage, "source": source, "run_id": ctx.run_id, "ingested_at": ctx.started_at.isoformat(),
        "expected": expected, "reject_bad": ctx.settings.bad_files == "reject", "evolve": evolve,
        "required": sorted(required) if evolve else None, "declared": declared,
    }
    reports = engine.map_items(pending, ingest_file, fn_kwargs=kwargs)
    bad_files = [r for r in reports if isinstance(r, Rejected)]
    ingested_files = [r for r in reports if isinstance(r, Ingested)]
    if bad_files:
        first = bad_files[0]
        rejects = f"rejected {len(bad_files)} unreadable file(s) (see _meta.rejected_files)"
        note = "; ".join(filter(None, [note, f"{rejects}, e.g. {first.path}: {first.error}"]))
        log.warning("%s: %s", result.table, note)
    data = [r.file for r in ingested_files]
    rejected = [r.quarantined for r in ingested_files if r.quarantined is not None]
    columns = _agree_on_columns(source, ingested_files, expected, evolve=evolve)
    added = [c for c in columns if expected is not None and c not in expected]
    if added and data:
        # A version of its own, just before the data's: a crash in between leaves a table with empty new columns.
        base = table.add_columns(storage, base, [pa.field(c, pa.string()) for c in added], run_id=ctx.run_id)
        note = "; ".join(filter(None, [note, f"added column(s) {', '.join(added)} (new in landed files)"]))
    result.files_in = len(pending)
    result.files_rejected = len(bad_files)
    result.rows_in = sum(r.raw_rows for r in ingested_files)
    result.rows_written = sum(f.rows for f in data)
    result.rows_quarantined = sum(f.rows for f in rejected)
    result.inputs = {f"raw.{source}": ingested + len(data)}
    info = {"run_id": ctx.run_id, "stage": "bronze", "files": len(data)}
    quarantine.commit(storage, source, rejected, stage="bronze", replace=False, metadata=info)
    if data:
        result.version = table.commit(
            storage, base, schema=bronze_schema(columns), adds=data, metadata=info,
            app_transactions={app_id(source): ingested + len(data)},
        )
    # After the data commit: a crash in between only means the bad file is read (and rejected) again.
    rejected_files.record(storage, source, [dataclasses.asdict(r) for r in bad_files], ctx.run_id)
    result.finish("committed" if data else "skipped", note)
    checks.enforce(result.checks, f"; the waiting files were ingested all the same (version {result.version})")
    return result


def _check_new_names(columns: list[str], expected: list[str], required: list[str], source: str, path: str) -> None:
    """A column a file brings in (policy evolve) must not clash with ours: lineage and engine columns start with "_",
    and two names that differ only in case are one column to most readers."""
    seen: dict[str, str] = {c.lower(): c for c in [*expected, *required]}
    for c in columns:
        if c in expected or c in required:
            continue
        clash = seen.get(c.lower())
        if c.startswith("_") or clash is not None:
            why = f"clashes with column {clash!r}" if clash else "names starting with '_' are the engine's"
            raise SchemaMismatch(f"new column {c!r} cannot be added: {why}", table=f"bronze.{source}", path=path,
                                 column=c)
        seen[c.lower()] = c


def bronze_schema(columns: list[str]) -> pa.Schema:
    return pa.schema([(c, pa.string()) for c in columns] + list(LINEAGE))


def data_columns(schema: pa.Schema | None) -> list[str]:
    return [n for n in (schema.names if schema else []) if n not in LINEAGE.names]


def _agree_on_columns(
    source: str, ingested: list[Ingested], expected: list[str] | None, *, evolve: bool
) -> list[str]:
    """The bronze columns: the table's, or on a first ingest the first file's; every file must have the same set
    (in any order: Delta readers match columns by name). With ``evolve``, columns new to the table are added (the
    workers already refused a file missing one of the table's columns)."""
    columns = expected
    for m in ingested:
        cols = list(m.columns)
        if columns is None:
            columns = cols
        elif evolve:
            columns = columns + [c for c in cols if c not in columns]
        elif set(cols) != set(columns):
            raise SchemaMismatch(_describe_difference(columns, cols), table=f"bronze.{source}", path=m.landed)
    return columns or []


def _describe_difference(expected: list[str], got: list[str]) -> str:
    missing = [c for c in expected if c not in got]
    extra = [c for c in got if c not in expected]
    parts = [f"missing column {c!r}" for c in missing] + [f"unexpected column {c!r}" for c in extra]
    return "; ".join(parts)


# --- worker side -------------------------------------------------------------------------------------------------


def ingest_file(
    item: dict[str, Any],
    *,
    storage: Storage,
    source: str,
    run_id: str,
    ingested_at: str,
    expected: list[str] | None,
    reject_bad: bool,
    evolve: bool,
    required: list[str] | None,
    declared: Source | None = None,
) -> list[Ingested | Rejected]:
    path, fmt = item["path"], item["format"]
    try:
        rows, lines, bad = read_landed(storage, path, fmt, declared or Source(source))
    except SourceFileError as e:
        if not reject_bad:
            raise
        return [Rejected(path, item["size"], item["mtime_ms"], e.message)]
    if evolve:
        _check_new_names(rows.column_names, expected or [], required or [], source, path)
    if expected is None and required:  # a first ingest under evolve: the models' columns must still be there
        expected = [c for c in rows.column_names if c in required] + [c for c in required if c not in rows.column_names]
    if expected is not None and rows.column_names != expected:
        new = [c for c in rows.column_names if c not in expected]
        missing = [c for c in expected if c not in rows.column_names]
        if evolve:  # a column may come and go, as long as the silver models' columns are all there
            missing = [c for c in missing if c in (required or [])]
            new = []
        if missing or new:
            raise SchemaMismatch(
                _describe_difference(expected, rows.column_names) if not evolve
                else f"missing column {missing[0]!r}", table=f"bronze.{source}", path=path,
                column=(missing or new)[0],
            )
        present = [c for c in expected if c in rows.column_names]
        rows = rows.select(present + [c for c in rows.column_names if c not in expected])
    n = rows.num_rows
    when = dt.datetime.fromisoformat(ingested_at)
    lineage = {
        "_source_file": pa.repeat(pa.scalar(path, pa.string()), n),
        "_source_line": pa.array(lines, pa.int64()),
        "_ingested_at": pa.repeat(pa.scalar(when, pa.timestamp("us", tz="UTC")), n),
        "_run_id": pa.repeat(pa.scalar(run_id, pa.string()), n),
    }
    for name, column in lineage.items():
        rows = rows.append_column(name, column)
    written = write_data_file(
        storage, ref(source).rel, rows, prefix=f"part-{run_id}", constant={"_source_file": path}
    )
    qfile = None
    if bad:
        q = quarantine.records(
            stage="bronze",
            checks=["malformed_record"] * len(bad),
            columns=[None] * len(bad),
            values=[None] * len(bad),
            failures=[json.dumps([{"check": "malformed_record", "reason": b[2]}]) for b in bad],
            rows=[b[1] for b in bad],
            source_files=[path] * len(bad),
            source_lines=[b[0] for b in bad],
            run_id=run_id,
        )
        qfile = quarantine.write(storage, source, q, stage="bronze", source_file=path, run_id=run_id)
    return [Ingested(path, written, n + len(bad), tuple(rows.column_names[: -len(LINEAGE)]), qfile)]

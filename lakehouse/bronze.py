"""Bronze: land raw files as they are, plus lineage, incrementally and exactly once per file.

Plan (driver): the landed files of a source, minus those the bronze table already holds (read from the log: every
bronze data file comes from one landed file and carries its path in exact ``_source_file`` stats). Execute (Ray
workers): one task per landed file reads it with every value as a string, keeps malformed lines apart with their
line number, and writes Parquet into the bronze table (and the quarantine table). Commit (driver): one version.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import gzip
import io
import json
import logging
import posixpath
import zlib
from collections.abc import Callable, Collection
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from lakehouse import checks, engine, quarantine, rejected_files, table
from lakehouse.context import RunContext, StageResult
from lakehouse.errors import SchemaMismatch, SourceFileError
from lakehouse.files import DataFile, write_data_file
from lakehouse.spec import Source
from lakehouse.storage import Storage
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
FORMATS = {".csv": "csv", ".json": "json", ".ndjson": "json", ".jsonl": "json", ".parquet": "parquet"}
DECLARED = {"csv": "csv", "ndjson": "json", "parquet": "parquet"}  # a Source's format -> the reader
COMPRESSED = ".gz"  # text formats may come gzipped: part-0.csv.gz
META = pa.schema(
    [
        ("kind", pa.string()),
        ("file", pa.string()),
        ("landed", pa.string()),
        ("raw_rows", pa.int64()),
        ("columns", pa.string()),
    ]
)


def ref(source: str) -> TableRef:
    return TableRef("bronze", source)


def app_id(source: str) -> str:
    """The bronze table's app transaction: how many landed files it holds (it only grows, one commit per batch)."""
    return f"lakehouse/bronze.{source}"


def file_format(path: str) -> str | None:
    base, ext = posixpath.splitext(path.lower())
    if ext == COMPRESSED:
        fmt = FORMATS.get(posixpath.splitext(base)[1])
        return fmt if fmt in ("csv", "json") else None
    return FORMATS.get(ext)


def pending_files(
    storage: Storage, snap: table.Snapshot, rejected: Collection[tuple[str, int, int]] = (), *,
    source: Source | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Landed files of the bronze table's source not in ``snap`` yet and not rejected as they are now (same size
    and modification time), by path (the order they are read and ranked in), and the landed files skipped because
    their extension names no format we read (a source that declares its format reads every file as that)."""
    source = source or Source(snap.ref.name)
    done = {f.mins.get("_source_file") for f in snap.files}
    landed = sorted(storage.list_files(source.raw_dir), key=lambda f: f.path)

    def fmt(path: str) -> str | None:
        return DECLARED[source.format] if source.format else file_format(path)

    pending = [
        {"path": f.path, "size": f.size, "mtime_ms": f.mtime_ms, "format": fmt(f.path)}
        for f in landed
        if f.path not in done and fmt(f.path) is not None and (f.path, f.size, f.mtime_ms) not in rejected
    ]
    return pending, [f.path for f in landed if fmt(f.path) is None]


def ingest(ctx: RunContext, declared: Source | str, required: Collection[str] = ()) -> StageResult:
    """Ingest every pending landed file of source ``declared`` into ``bronze.<name>`` in one commit. ``required`` are
    the columns the silver models built from it need (a file without one cannot go further). In a change-event source
    a ``null`` JSON line (Kafka's tombstone after a delete) is no record rather than a malformed one."""
    declared = Source(declared) if isinstance(declared, str) else declared
    source = declared.name
    result = StageResult(table=str(ref(source)))
    storage = ctx.storage
    base = table.snapshot(storage, ref(source))
    pending, unknown = pending_files(storage, base, rejected_files.known(storage, source), source=declared)
    ingested = len({f.mins.get("_source_file") for f in base.files})
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
    meta = engine.collect(engine.run_tasks(pending, _ingest_file, fn_kwargs=kwargs))
    bad_files = [json.loads(m["file"]) for m in meta if m["kind"] == "rejected"]
    if bad_files:
        first = bad_files[0]
        rejects = f"rejected {len(bad_files)} unreadable file(s) (see _meta.rejected_files)"
        note = "; ".join(filter(None, [note, f"{rejects}, e.g. {first['path']}: {first['error']}"]))
        log.warning("%s: %s", result.table, note)
    data = [DataFile.from_json(m["file"]) for m in meta if m["kind"] == "bronze"]
    rejected = [DataFile.from_json(m["file"]) for m in meta if m["kind"] == "quarantine"]
    columns = _agree_on_columns(source, meta, expected, evolve=evolve)
    added = [c for c in columns if expected is not None and c not in expected]
    if added and data:
        # A version of its own, just before the data's: a crash in between leaves a table with empty new columns.
        base = table.add_columns(storage, base, [pa.field(c, pa.string()) for c in added])
        note = "; ".join(filter(None, [note, f"added column(s) {', '.join(added)} (new in landed files)"]))
    result.files_in = len(pending)
    result.files_rejected = len(bad_files)
    result.rows_in = sum(m["raw_rows"] for m in meta if m["kind"] == "bronze")
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
    rejected_files.record(storage, source, bad_files, ctx.run_id)
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
    source: str, meta: list[dict[str, Any]], expected: list[str] | None, *, evolve: bool
) -> list[str]:
    """The bronze columns: the table's, or on a first ingest the first file's; every file must have the same set
    (in any order: Delta readers match columns by name). With ``evolve``, columns new to the table are added (the
    workers already refused a file missing one of the table's columns)."""
    columns = expected
    for m in meta:
        if m["kind"] != "bronze":
            continue
        cols = json.loads(m["columns"])
        if columns is None:
            columns = cols
        elif evolve:
            columns = columns + [c for c in cols if c not in columns]
        elif set(cols) != set(columns):
            raise SchemaMismatch(_describe_difference(columns, cols), table=f"bronze.{source}", path=m["landed"])
    return columns or []


def _describe_difference(expected: list[str], got: list[str]) -> str:
    missing = [c for c in expected if c not in got]
    extra = [c for c in got if c not in expected]
    parts = [f"missing column {c!r}" for c in missing] + [f"unexpected column {c!r}" for c in extra]
    return "; ".join(parts)


# --- worker side -------------------------------------------------------------------------------------------------


def _ingest_file(
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
) -> pa.Table:
    path, fmt = item["path"], item["format"]
    try:
        rows, lines, bad = _read_landed(storage, path, fmt, declared or Source(source))
    except SourceFileError as e:
        if not reject_bad:
            raise
        rejected = {"path": path, "size": item["size"], "mtime_ms": item["mtime_ms"], "error": e.message}
        return pa.Table.from_pylist(
            [{"kind": "rejected", "file": json.dumps(rejected), "landed": path, "raw_rows": 0, "columns": "[]"}],
            schema=META,
        )
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
    out = [
        {
            "kind": "bronze",
            "file": written.to_json(),
            "landed": path,
            "raw_rows": n + len(bad),
            "columns": json.dumps(rows.column_names[: -len(LINEAGE)]),
        }
    ]
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
        out.append({"kind": "quarantine", "file": qfile.to_json(), "landed": path, "raw_rows": 0, "columns": "[]"})
    return pa.Table.from_pylist(out, schema=META)


Bad = tuple[int, str, str]  # line number, raw text, reason


def _read_landed(storage: Storage, path: str, fmt: str, declared: Source) -> tuple[pa.Table, list[int], list[Bad]]:
    """Read a landed file as strings, with its source's reader options; a file that cannot be read as a whole
    raises :class:`SourceFileError`."""
    source = declared.name
    try:
        with storage.open_input(path) as f:
            raw = f.read()
    except OSError as e:
        raise SourceFileError(f"cannot read: {e}", path=path, source=source) from e
    if path.lower().endswith(COMPRESSED) or declared.compression == "gzip":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise SourceFileError(f"truncated or corrupt gzip: {e}", path=path, source=source) from e
    if not raw.strip():
        raise SourceFileError("empty file", path=path, source=source)
    if fmt != "parquet":
        _check_text(raw, path)
    readers: dict[str, Callable[[bytes, str], tuple[pa.Table, list[int], list[Bad]]]] = {
        "csv": functools.partial(_read_csv, delimiter=declared.delimiter, quote=declared.quote,
                                 nulls=tuple(declared.nulls)),
        "json": functools.partial(_read_json, tombstones=declared.changes), "parquet": _read_parquet}
    rows, lines, bad = readers[fmt](raw, path)
    if rows.num_rows == 0 and not bad:
        raise SourceFileError("no data rows (only a header)" if fmt == "csv" else "no data rows", path=path)
    return rows, lines, bad


def _check_text(raw: bytes, path: str) -> None:
    """Text formats must be UTF-8 text: binary junk would otherwise come out as a few garbled rows."""
    head = raw[: 1 << 16]
    nul = head.find(b"\x00")
    if nul >= 0:
        raise SourceFileError(f"binary data, not UTF-8 text (a NUL byte at offset {nul})", path=path)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut at the 64 KiB boundary
            raise SourceFileError(f"not UTF-8 text (byte 0x{head[e.start]:02x} at offset {e.start})", path=path) from e


def _read_csv(
    raw: bytes, path: str, *, delimiter: str = ",", quote: str = '"', nulls: tuple[str, ...] = ()
) -> tuple[pa.Table, list[int], list[Bad]]:
    """All values as strings; lines with the wrong number of fields are set aside with their record number.

    Record numbers count the header as 1 and blank lines too, so they are the physical line numbers unless a quoted
    value spans lines.
    """
    header_line = raw.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace").rstrip("\r")
    if not header_line.strip():
        raise SourceFileError("empty file or empty header line", path=path)
    names = next(csv.reader([header_line], delimiter=delimiter, quotechar=quote))
    bad: list[Bad] = []

    def on_invalid(row: Any) -> str:
        reason = f"expected {row.expected_columns} fields, found {row.actual_columns}"
        bad.append((int(row.number), row.text, reason))
        return "skip"

    try:
        rows = pacsv.read_csv(
            io.BytesIO(raw),
            read_options=pacsv.ReadOptions(use_threads=False, block_size=16 << 20),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid, newlines_in_values=True,
                                             delimiter=delimiter, quote_char=quote),
            # Values are kept as landed, blanks included; a source's declared null markers (NULL, \N) are nulls.
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=bool(nulls),
                null_values=list(nulls), quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as e:
        raise SourceFileError(f"not a readable CSV file: {e}", path=path) from e
    spans = _swallows_lines(rows) or any("\n" in text for _, text, _ in bad)
    if quote.encode() in raw and spans and (opened := _unclosed_quote_line(raw, delimiter, quote)) is not None:
        # A quote never closed swallows the rest of the file into the last value, which the reader accepts.
        raise SourceFileError(f"a quoted value opened on line {opened} is never closed", path=path)
    # The valid rows are the record numbers not taken by a bad record. pyarrow skips blank lines without numbering
    # them: map record numbers back to line numbers when the file has any.
    taken = {b[0] for b in bad}
    lines, number = [], 2
    for _ in range(rows.num_rows):
        while number in taken:
            number += 1
        lines.append(number)
        number += 1
    to_line = _record_lines(raw)
    if to_line:
        lines = [to_line(n) for n in lines]
        bad = [(to_line(n), text, reason) for n, text, reason in bad]
    return rows, lines, bad


def _swallows_lines(rows: pa.Table) -> bool:
    """Does the last row hold a value spanning lines (what an unclosed quote makes of the rest of a file, unless the
    swallowed record ends up with the wrong number of fields: then it is a bad record spanning lines)?"""
    if not rows.num_rows:
        return False
    last = rows.slice(rows.num_rows - 1)
    return any("\n" in (last.column(i)[0].as_py() or "") for i in range(last.num_columns))


def _unclosed_quote_line(raw: bytes, delimiter: str = ",", quote: str = '"') -> int | None:
    """The line where a quoted value that is never closed opens, or None when every one is closed.

    As the reader sees it: a quote opens a quoted value only at the start of a field (elsewhere it is a literal
    character, as in ``12" pizza``), and inside one a doubled quote is an escaped quote. Only called for a file with
    after the last row was seen to span lines, so the byte-by-byte scan is rare.
    """
    q, sep = ord(quote), ord(delimiter)
    line, opened, inside, field_start, i, n = 1, 0, False, True, 0, len(raw)
    while i < n:
        byte = raw[i]
        if inside:
            if byte == q:
                if i + 1 < n and raw[i + 1] == q:
                    i += 1  # an escaped quote
                else:
                    inside = False
            elif byte == 0x0A:
                line += 1
        elif byte == q and field_start:
            inside, opened = True, line
        elif byte == 0x0A:
            line += 1
        field_start = not inside and byte in (sep, 0x0A)  # after a delimiter or a newline
        i += 1
    return opened if inside else None


def _record_lines(raw: bytes) -> Any:
    """A map from pyarrow's record numbers (blank lines not counted) to line numbers, when the file has blank lines."""
    if b"\n\n" not in raw and b"\n\r\n" not in raw:
        return None
    pieces = raw.split(b"\n")
    if pieces and not pieces[-1]:
        pieces.pop()  # the piece after the final newline is not a line
    nonblank = [n for n, line in enumerate(pieces, start=1) if line.strip(b"\r")]
    return lambda record: nonblank[record - 1] if record <= len(nonblank) else record


def _read_json(raw: bytes, path: str, *, tombstones: bool = False) -> tuple[pa.Table, list[int], list[Bad]]:
    """Newline-delimited JSON objects; scalar values become strings, nested ones their JSON text. With ``tombstones``
    a ``null`` line (what a Kafka Connect sink writes after a delete) is no record; otherwise it is malformed."""
    records: list[dict[str, str | None]] = []
    lines: list[int] = []
    bad: list[Bad] = []
    columns: dict[str, None] = {}
    # Records are separated by "\n" only: str.splitlines() would also split on U+2028, U+0085, ... inside strings.
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SourceFileError(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})", path=path) from e
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append((number, line, f"invalid JSON: {e.msg} at column {e.colno}"))
            continue
        if obj is None and tombstones:
            continue  # a tombstone (Kafka's null value after a delete): no record
        if not isinstance(obj, dict):
            bad.append((number, line, f"expected a JSON object, found {'null' if obj is None else type(obj).__name__}"))
            continue
        records.append({k: _json_string(v) for k, v in obj.items()})
        columns.update(dict.fromkeys(obj))
        lines.append(number)
    schema = pa.schema([(c, pa.string()) for c in columns])
    return pa.Table.from_pylist(records, schema=schema), lines, bad


def _json_string(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _read_parquet(raw: bytes, path: str) -> tuple[pa.Table, list[int], list[Bad]]:
    try:
        data = pq.read_table(io.BytesIO(raw))
    except (pa.ArrowInvalid, OSError) as e:
        raise SourceFileError(f"not a readable Parquet file: {e}", path=path) from e
    strings = pa.table({n: data.column(n).cast(pa.string()) for n in data.column_names})
    return strings, list(range(1, data.num_rows + 1)), []

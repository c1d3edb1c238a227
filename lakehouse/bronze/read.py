"""Reading a landed file: CSV (with its source's delimiter, quote and null markers), NDJSON or Parquet, optionally
gzipped, every value as a string, with each row's line number. Malformed lines come back apart (``Bad``) to be
quarantined; a file that cannot be read as a whole raises :class:`SourceFileError`.

A source of change events keeps each record whole, as the JSON text of one ``event`` column: the forms a Debezium
feed takes (an envelope, Kafka Connect's ``{"schema", "payload"}`` wrapping, a flattened row) differ in their
top-level fields, event by event, and the change stage tells them apart (:mod:`lakehouse.cdc.debezium`)."""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import posixpath
import zlib
from collections.abc import Callable
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from lakehouse.errors import SourceFileError
from lakehouse.spec import Source
from lakehouse.storage import Storage

FORMATS = {".csv": "csv", ".json": "json", ".ndjson": "json", ".jsonl": "json", ".parquet": "parquet"}
DECLARED = {"csv": "csv", "ndjson": "json", "parquet": "parquet"}  # a Source's format -> the reader
EVENT = "event"  # the one bronze column of a change-event source
COMPRESSED = ".gz"  # text formats may come gzipped: part-0.csv.gz

def file_format(path: str) -> str | None:
    base, ext = posixpath.splitext(path.lower())
    if ext == COMPRESSED:
        fmt = FORMATS.get(posixpath.splitext(base)[1])
        return fmt if fmt in ("csv", "json") else None
    return FORMATS.get(ext)


Bad = tuple[int, str, str]  # line number, raw text, reason


def read_landed(storage: Storage, path: str, fmt: str, declared: Source) -> tuple[pa.Table, list[int], list[Bad]]:
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
        "csv": functools.partial(read_csv, delimiter=declared.delimiter, quote=declared.quote,
                                 nulls=tuple(declared.nulls)),
        "json": functools.partial(read_json, changes=declared.changes), "parquet": read_parquet}
    rows, lines, bad = readers[fmt](raw, path)
    if declared.changes and fmt != "json":  # a flattened feed as CSV or Parquet: each row is one event
        rows = pa.table({EVENT: pa.array([json.dumps(r) for r in rows.to_pylist()], pa.string())})
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


def read_csv(
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
    lines = _record_numbers(rows.num_rows, {b[0] for b in bad})
    to_line = _record_lines(raw)
    if to_line:
        lines = [to_line(n) for n in lines]
        bad = [(to_line(n), text, reason) for n, text, reason in bad]
    return rows, lines, bad


def _record_numbers(count: int, taken: set[int]) -> list[int]:
    """The record numbers of ``count`` valid records: from 2 (after the header) up, skipping those ``taken`` by bad
    records."""
    if not taken:
        return list(range(2, 2 + count))
    numbers = pl.int_range(2, 2 + count + len(taken), eager=True)
    return numbers.filter(~numbers.is_in(list(taken))).head(count).to_list()


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


def read_json(raw: bytes, path: str, *, changes: bool = False) -> tuple[pa.Table, list[int], list[Bad]]:
    """Newline-delimited JSON objects; scalar values become strings, nested ones their JSON text. With ``changes``
    (a change-event source) a ``null`` line (what a Kafka Connect sink writes after a delete) is no record, and each
    object is kept whole as the text of column ``event``; otherwise a ``null`` line is malformed."""
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
        if obj is None and changes:
            continue  # a tombstone (Kafka's null value after a delete): no record
        if not isinstance(obj, dict):
            bad.append((number, line, f"expected a JSON object, found {'null' if obj is None else type(obj).__name__}"))
            continue
        if changes:  # a change event: kept whole, as landed
            records.append({EVENT: line})
            columns[EVENT] = None
        else:
            records.append({k: _json_string(v) for k, v in obj.items()})
            columns.update(dict.fromkeys(obj))
        lines.append(number)
    schema = pa.schema([(c, pa.string()) for c in columns])
    return pa.Table.from_pylist(records, schema=schema), lines, bad


def _json_string(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def read_parquet(raw: bytes, path: str) -> tuple[pa.Table, list[int], list[Bad]]:
    try:
        data = pq.read_table(io.BytesIO(raw))
    except (pa.ArrowInvalid, OSError) as e:
        raise SourceFileError(f"not a readable Parquet file: {e}", path=path) from e
    strings = pa.table({n: data.column(n).cast(pa.string()) for n in data.column_names})
    return strings, list(range(1, data.num_rows + 1)), []

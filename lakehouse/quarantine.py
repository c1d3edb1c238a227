"""Quarantine: rejected rows with the reason, kept in ``quarantine.<table>`` so nothing is ever lost.

One record per rejected row: the stage that rejected it (``bronze``: the line could not be parsed; ``silver``: a
type or rule check failed), the first failed check and its column and value, every failure as JSON, the row itself
(its raw text, or its original string values as JSON), where it came from and the run that rejected it.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from lakehouse.table import TableRef

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

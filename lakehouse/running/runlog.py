"""The run record: one row per table per run in ``_meta.runs``, so "what did run X do?" is a query.

``version`` is the version the stage committed (or, when it had nothing to do, the version the table was at), and
``inputs`` the versions of the tables it read, as JSON: "which silver version was gold built from?" is
``SELECT inputs FROM _meta.runs WHERE table_name = 'gold.…'``.
"""

from __future__ import annotations

import json

import pyarrow as pa

from lakehouse import table
from lakehouse.ops import faults
from lakehouse.running.context import RunContext, StageResult
from lakehouse.table import TableRef

REF = TableRef("_meta", "runs")
SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("pipeline", pa.string()),
        ("table_name", pa.string()),
        ("status", pa.string()),
        ("rows_in", pa.int64()),
        ("rows_written", pa.int64()),
        ("rows_quarantined", pa.int64()),
        ("rows_duplicate", pa.int64()),
        ("files_in", pa.int64()),
        ("files_rejected", pa.int64()),
        ("partitions", pa.int64()),
        ("version", pa.int64()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("ended_at", pa.timestamp("us", tz="UTC")),
        ("seconds", pa.float64()),
        ("message", pa.string()),
        ("full_refresh", pa.bool_()),
        ("inputs", pa.string()),
        ("files_pending", pa.int64()),
        ("pending_seconds", pa.float64()),
        ("lag_seconds", pa.float64()),
    ]
)


def record(ctx: RunContext, results: list[StageResult]) -> None:
    """Append the run's stage results to ``_meta.runs`` (one commit)."""
    if not results:
        return
    rows = [
        {
            "run_id": ctx.run_id,
            "pipeline": ctx.settings.pipeline,
            "table_name": r.table,
            "status": r.status,
            "rows_in": r.rows_in,
            "rows_written": r.rows_written,
            "rows_quarantined": r.rows_quarantined,
            "rows_duplicate": r.rows_duplicate,
            "files_in": r.files_in,
            "files_rejected": r.files_rejected,
            "partitions": r.partitions,
            "version": r.version,
            "started_at": r.started_at,
            "ended_at": r.ended_at,
            "seconds": round(r.seconds, 3),
            "message": r.message,
            "full_refresh": ctx.full_refresh,
            "inputs": json.dumps(r.inputs, sort_keys=True),
            "files_pending": r.files_pending,
            "pending_seconds": round(r.pending_seconds, 3),
            "lag_seconds": round(r.lag_seconds, 3),
        }
        for r in results
    ]
    faults.point(f"{REF}:before_commit")
    table.append_rows(ctx.storage, REF, pa.Table.from_pylist(rows, schema=SCHEMA))

"""Quality gates: table-level checks evaluated before a table's commit, and their record in ``_meta.checks``.

A check observes a number about a batch (the share of its rows quarantined, ...) and compares it with the table's
threshold. A failed check whose action is ``fail`` stops the run before the table commits anything, so neither it
nor the tables built from it see the batch; the error names the table and the check. Every evaluated check, passed
or not, is a row of ``_meta.checks`` (run, table, check, observed value, threshold, action, passed), so "which checks
failed last week" is a query.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

import pyarrow as pa

from lakehouse import table
from lakehouse.errors import QualityGateFailed
from lakehouse.storage import Storage
from lakehouse.table import TableRef

REF = TableRef("_meta", "checks")
SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("table_name", pa.string()),
        ("check", pa.string()),
        ("observed", pa.float64()),
        ("threshold", pa.float64()),
        ("action", pa.string()),
        ("passed", pa.bool_()),
        ("message", pa.string()),
        ("checked_at", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass(frozen=True)
class CheckResult:
    table: str
    check: str
    observed: float
    threshold: float
    action: str  # "fail" or "warn"
    passed: bool
    message: str


def quarantined_share(table_name: str, rows_in: int, quarantined: int, threshold: float) -> CheckResult:
    """The share of a batch's rows that went to quarantine, against the table's maximum."""
    share = quarantined / rows_in if rows_in else 0.0
    passed = share <= threshold
    verdict = "within" if passed else "above"
    message = (f"{quarantined} of {rows_in} rows quarantined ({share:.2%}), {verdict} the maximum of "
               f"{threshold:.2%}")
    return CheckResult(table_name, "quarantined_share", share, threshold, "fail", passed, message)


def enforce(results: list[CheckResult]) -> None:
    """Raise :class:`QualityGateFailed` for the first failed check whose action is ``fail``."""
    for r in results:
        if not r.passed and r.action == "fail":
            raise QualityGateFailed(f"quality check {r.check} failed: {r.message}", table=r.table, check=r.check,
                                    checks=[asdict(c) for c in results])


def record(storage: Storage, run_id: str, results: list[CheckResult]) -> None:
    """Append the run's evaluated checks to ``_meta.checks`` (one commit)."""
    if not results:
        return
    now = dt.datetime.now(dt.UTC)
    rows = [{"run_id": run_id, "table_name": r.table, "check": r.check, "observed": r.observed,
             "threshold": r.threshold, "action": r.action, "passed": r.passed, "message": r.message,
             "checked_at": now} for r in results]
    table.append_rows(storage, REF, pa.Table.from_pylist(rows, schema=SCHEMA))


def of_error(error: BaseException) -> list[CheckResult]:
    """The checks a :class:`QualityGateFailed` carries (evaluated before it stopped the table), else none."""
    found = getattr(error, "context", {}).get("checks") or []
    return [CheckResult(**c) for c in found]

"""Quality gates: table-level checks evaluated before a table's commit, and their record in ``_meta.checks``.

A check observes a number about a batch (the share of its rows quarantined, its row count, its orphans, ...) and
compares it with the table's threshold. A failed check whose action is ``fail`` stops the run before the table commits
anything, so neither it nor the tables built from it see the batch; the error names the table and the check. A failed
``warn`` check is recorded and the run goes on. Every evaluated check, passed or not, is a row of ``_meta.checks``
(run, table, check, observed value, threshold, action, passed), so "which checks failed last week" is a query.

The thresholds are the model's (``Config.metadata["gates"]``, see :class:`Gates`), with the settings' per-table
overrides on top; each check's action is its default (:data:`DEFAULT_ACTIONS`) unless ``Settings.check_actions``
names another.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa

from lakehouse import table
from lakehouse.errors import ConfigError, QualityGateFailed
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


# What a failed check does unless Settings.check_actions says otherwise: a batch that is mostly bad, empty or of an
# implausible size is refused; findings about the data as a whole (orphans, staleness, drift, lag) are reported.
DEFAULT_ACTIONS = {
    "quarantined_share": "fail",
    "batch_rows": "fail",
    "empty_batch": "fail",
    "references": "warn",
    "freshness": "warn",
    "drift_rows": "warn",
    "drift_null_share": "warn",
    "drift_mean": "warn",
    "drift_quantiles": "warn",
    "ingest_lag": "warn",
}
# A table that declares nothing about quality is still protected: a batch with more than this share of its rows
# quarantined fails before the table commits (loosen it per table with Settings.max_quarantined_share, e.g.
# {"orders": 0.2}, or {"orders": 1.0} to turn it off).
DEFAULT_MAX_QUARANTINED_SHARE = 0.05
DRIFT_KINDS = ("rows", "null_share", "mean", "quantiles")
QUANTILES = (0.5, 0.95)
# Below this many rows in either month, only the row count is compared: a handful of rows has no stable mean.
DRIFT_MIN_ROWS = 100


@dataclass(frozen=True)
class Gates:
    """A table's checks and thresholds. From the model's ``Config.metadata["gates"]``::

        {"max_quarantined_share": 0.01,           # share of a batch's rows quarantined
         "batch_rows": (1, 10_000_000),           # valid rows per incremental batch (None: no bound)
         "references": {"o_custkey": "customer.c_custkey"},   # referential integrity: orphans reported
         "drift": {"rows": 0.5, "null_share": 0.05, "mean": 0.2, "quantiles": 0.25},  # vs the previous month
         "freshness_days": 2}                     # newest event date vs the run's logical date

    overridden per table by the settings (``max_quarantined_share``, ``batch_rows``, ``freshness_days``,
    ``expect_delivery``: a run that brings the table no new rows fails ``empty_batch``)."""

    table: str
    max_quarantined_share: float | None = None
    batch_rows: tuple[int | None, int | None] | None = None
    expect_delivery: bool = False
    references: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    freshness_days: float | None = None
    drift: Mapping[str, float] = field(default_factory=dict)
    actions: Mapping[str, str] = field(default_factory=dict)

    def action(self, check: str) -> str:
        return action_of(self.actions, self.table, check)

    def result(
        self, check: str, observed: float, threshold: float, passed: bool, message: str, *, name: str | None = None
    ) -> CheckResult:
        """A result of check kind ``check`` (its action), recorded as ``name`` (default: the kind)."""
        return CheckResult(f"silver.{self.table}", name or check, float(observed), float(threshold),
                           self.action(check), passed, message)


def action_of(actions: Mapping[str, str], name: str, check: str) -> str:
    """The action of ``check`` on table or source ``name``: the settings' (``name.check``, then ``check``), else the
    check's default."""
    return actions.get(f"{name}.{check}") or actions.get(check) or DEFAULT_ACTIONS[check]


def gates(name: str, metadata: Mapping[str, Any], settings: Any) -> Gates:
    """The gates of silver table ``name``: the model's (``metadata["gates"]``), then the settings' overrides."""
    found = dict(metadata.get("gates") or {})
    unknown = set(found) - {"max_quarantined_share", "batch_rows", "references", "drift", "freshness_days"}
    if unknown:
        raise ConfigError(f"model of {name}: unknown gate(s) {', '.join(sorted(unknown))}")
    drift = dict(found.get("drift") or {})
    if set(drift) - set(DRIFT_KINDS):
        raise ConfigError(f"model of {name}: drift thresholds are {', '.join(DRIFT_KINDS)}, not {sorted(drift)}")
    references = {}
    for column, target in (found.get("references") or {}).items():
        parent, _, key = str(target).partition(".")
        if not parent or not key:
            raise ConfigError(f"model of {name}: reference of {column} must be 'table.column', not {target!r}")
        references[column] = (parent, key)

    def per_table(option: Mapping[str, Any], default: Any) -> Any:
        return option.get(name, option.get("*", default))

    batch_rows = per_table(settings.batch_rows, found.get("batch_rows"))
    return Gates(
        table=name,
        max_quarantined_share=per_table(settings.max_quarantined_share,
                                        found.get("max_quarantined_share", DEFAULT_MAX_QUARANTINED_SHARE)),
        batch_rows=tuple(batch_rows) if batch_rows is not None else None,  # type: ignore[arg-type]
        expect_delivery=name in settings.expect_delivery or "*" in settings.expect_delivery,
        references=references,
        freshness_days=per_table(settings.freshness_days, found.get("freshness_days")),
        drift=drift,
        actions=dict(settings.check_actions),
    )


def quarantined_share(
    gate: Gates, rows_in: int, quarantined: int, threshold: float, worst: Mapping[str, Any] | None = None
) -> CheckResult:
    """The share of a batch's rows that went to quarantine, against the table's maximum; ``worst`` is the most
    frequent reason (check, column, an example value and where it was), named when the check fails."""
    share = quarantined / rows_in if rows_in else 0.0
    passed = share <= threshold
    verdict = "within" if passed else "above"
    message = (f"{quarantined} of {rows_in} rows quarantined ({share:.2%}), {verdict} the maximum of "
               f"{threshold:.2%}")
    if worst and not passed:
        message += (f"; most often {worst['check']} on column {worst['column']} ({worst['n']} rows), e.g. value "
                    f"{worst['value']!r} in {worst['file']} line {worst['line']}")
    return gate.result("quarantined_share", share, threshold, passed, message)


def batch_rows(gate: Gates, rows: int) -> CheckResult:
    """The number of valid rows a batch brought, within the table's expected range."""
    assert gate.batch_rows is not None
    low, high = gate.batch_rows
    passed = (low is None or rows >= low) and (high is None or rows <= high)
    bounds = f"[{low if low is not None else '-'}, {high if high is not None else '-'}]"
    verdict = "within" if passed else "outside"
    message = f"the batch brought {rows} valid rows, {verdict} the expected range {bounds}"
    threshold = (low if not passed and low is not None and rows < low else high) or 0
    return gate.result("batch_rows", rows, threshold, passed, message)


def empty_batch(gate: Gates, why: str) -> CheckResult:
    """A table that expects a delivery every run got no new rows."""
    return gate.result("empty_batch", 0, 1, False, f"no new rows although the source is expected to deliver: {why}")


def references(gate: Gates, column: str, parent: str, key: str, found: Mapping[str, Any]) -> CheckResult:
    """Rows of the batch whose ``column`` has no row in ``silver.<parent>`` (``found``: ``orphans``, ``checked``,
    ``sample``)."""
    orphans, checked = int(found["orphans"]), int(found["checked"])
    passed = orphans == 0
    message = f"{checked} new rows checked against silver.{parent}.{key}: "
    if passed:
        message += "no orphans"
    else:
        sample = ", ".join(str(v) for v in found["sample"])
        message += f"{orphans} row(s) have a {column} with no silver.{parent} row (e.g. {column} = {sample})"
    return gate.result("references", orphans, 0, passed, message, name=f"references({column} -> {parent}.{key})")


def warned(table_name: str, check: str, column: str, n: int, example: Mapping[str, Any]) -> CheckResult:
    """Rows that failed a row rule whose action is ``warn``: kept, counted and reported."""
    message = (f"{n} row(s) kept with a warning: {check} on column {column}, e.g. value {example['value']!r} in "
               f"{example['file']} line {example['line']}")
    return CheckResult(table_name, f"{check} on {column}", float(n), 0.0, "warn", False, message)


def freshness(gate: Gates, newest: dt.date | None, logical_date: dt.date) -> CheckResult:
    """The newest event date in the table, at most ``freshness_days`` before the run's logical date."""
    assert gate.freshness_days is not None
    if newest is None:
        return gate.result("freshness", math.inf, gate.freshness_days, False, "the table has no rows")
    age = (logical_date - newest).days
    passed = age <= gate.freshness_days
    verdict = "within" if passed else "beyond"
    message = (f"newest event date {newest.isoformat()} is {age} days before the logical date "
               f"{logical_date.isoformat()}, {verdict} the SLA of {gate.freshness_days:g} days")
    return gate.result("freshness", age, gate.freshness_days, passed, message)


def ingest_lag(source: str, pending: int, oldest_seconds: float, threshold: float, action: str) -> CheckResult:
    """Landed files waiting at the start of the run, and how long the oldest has waited."""
    passed = oldest_seconds <= threshold
    verdict = "within" if passed else "above"
    message = (f"{pending} landed files not yet ingested; the oldest waited {oldest_seconds:.0f}s, {verdict} the "
               f"maximum of {threshold:.0f}s")
    return CheckResult(f"bronze.{source}", "ingest_lag", oldest_seconds, threshold, action, passed, message)


# --- profiles and drift -------------------------------------------------------------------------------------------


def profile(df: pl.DataFrame, measures: list[str]) -> dict[str, Any]:
    """What drift is measured on, for one partition: its row count, the null share of every column, and the mean and
    quantiles of the ``measures`` (numeric columns). Runs on a worker; JSON-serialisable."""
    n = df.height
    nulls = {c: (df.get_column(c).null_count() / n if n else 0.0) for c in df.columns if not c.startswith("_")}
    stats: dict[str, Any] = {"rows": n, "null_share": nulls, "mean": {}, "quantiles": {}}
    for c in measures:
        s = df.get_column(c).drop_nulls()
        if s.len():
            stats["mean"][c] = float(s.mean())  # type: ignore[arg-type]
            stats["quantiles"][c] = [float(s.quantile(q, "nearest")) for q in QUANTILES]  # type: ignore[arg-type]
    return stats


def drift(gate: Gates, pairs: list[tuple[str, dict[str, Any], str, dict[str, Any]]]) -> list[CheckResult]:
    """Each partition written this batch against the month before it (``pairs``: month, profile, previous month,
    its profile): one result per drift kind with a threshold, the largest change found, naming month and column.

    Changes are relative for row counts, means and quantiles (``|new - old| / |old|``) and absolute for null shares.
    """
    out = []
    for kind in DRIFT_KINDS:
        threshold = gate.drift.get(kind)
        if threshold is None or not pairs:
            continue
        worst: tuple[float, str] = (0.0, "no change")
        for month, new, prev_month, old in pairs:
            for change, what in _changes(kind, new, old):
                if change > worst[0]:
                    worst = (change, f"{month[:7]} vs {prev_month[:7]}: {what}")
        passed = worst[0] <= threshold
        verdict = "within" if passed else "above"
        unit = "" if kind == "null_share" else " (relative)"
        message = (f"largest change{unit} {worst[0]:.1%}, {verdict} the maximum of {threshold:.1%}, over "
                   f"{len(pairs)} partition(s); {worst[1]}")
        out.append(gate.result(f"drift_{kind}", worst[0], threshold, passed, message))
    return out


def _relative(new: float, old: float) -> float:
    if old == new:
        return 0.0
    return abs(new - old) / abs(old) if old else math.inf


def _changes(kind: str, new: dict[str, Any], old: dict[str, Any]) -> list[tuple[float, str]]:
    if kind == "rows":
        return [(_relative(new["rows"], old["rows"]), f"{new['rows']} rows, was {old['rows']}")]
    if min(new["rows"], old["rows"]) < DRIFT_MIN_ROWS:
        return []
    found = []
    for column, value in new[kind].items():
        before = old[kind].get(column)
        if before is None:
            continue
        if kind == "null_share":
            found.append((abs(value - before), f"{column} null share {value:.1%}, was {before:.1%}"))
        elif kind == "mean":
            found.append((_relative(value, before), f"{column} mean {value:.4g}, was {before:.4g}"))
        else:
            for q, v, b in zip(QUANTILES, value, before, strict=True):
                found.append((_relative(v, b), f"{column} p{round(q * 100)} {v:.4g}, was {b:.4g}"))
    return found


def enforce(results: list[CheckResult], note: str = "") -> None:
    """Raise :class:`QualityGateFailed` for the first failed check whose action is ``fail`` (``note`` appended)."""
    for r in results:
        if not r.passed and r.action == "fail":
            raise QualityGateFailed(f"quality check {r.check} failed: {r.message}{note}", table=r.table,
                                    check=r.check, checks=[asdict(c) for c in results])


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

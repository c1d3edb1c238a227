"""The context of one pipeline run, and what each stage reports back."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from lakehouse.settings import Settings
from lakehouse.storage import Storage

Status = Literal["committed", "skipped", "failed", "rolled_back"]


def new_run_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class RunContext:
    """Who is running, where, and since when; passed to every stage of one run."""

    settings: Settings
    run_id: str
    started_at: dt.datetime
    full_refresh: bool = False
    # A backfill: the first days of the first and last month (ISO dates) whose partitions this run rebuilds.
    months: tuple[str, str] | None = None
    # The date the run is for (freshness is measured against it); None: the day it started (UTC).
    logical_date: dt.date | None = None

    @property
    def as_of(self) -> dt.date:
        return self.logical_date or self.started_at.date()

    @classmethod
    def start(
        cls,
        settings: Settings,
        *,
        full_refresh: bool = False,
        run_id: str | None = None,
        months: tuple[str, str] | None = None,
        logical_date: dt.date | None = None,
        read_only: bool = False,
    ) -> RunContext:
        """A run's context, as it starts: an S3 root whose endpoint does not answer fails here, within the settings'
        ``storage_timeout``, rather than in the first stage after the S3 clients' minutes of retries; and, unless
        ``read_only`` (plan, status) or ``allow_unsafe_store``, one whose PUTs ignore If-None-Match is refused."""
        storage = Storage.from_settings(settings)
        storage.check_answers(settings.storage_timeout)
        if not read_only and not settings.allow_unsafe_store:
            storage.check_conditional_puts()
        now = dt.datetime.now(dt.UTC)
        return cls(settings=settings, run_id=run_id or new_run_id(now), started_at=now, full_refresh=full_refresh,
                   months=months, logical_date=logical_date)

    @property
    def storage(self) -> Storage:
        return Storage.from_settings(self.settings)


@dataclass
class StageResult:
    """One table's outcome in a run; the counts add up (see the README's "Counts" section)."""

    table: str
    status: Status = "skipped"
    rows_in: int = 0
    rows_written: int = 0
    rows_quarantined: int = 0
    rows_duplicate: int = 0
    version: int | None = None
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    ended_at: dt.datetime | None = None
    message: str = ""
    files_in: int = 0
    files_rejected: int = 0  # landed files that could not be read (see _meta.rejected_files)
    partitions: int = 0
    # Bronze: landed files waiting for ingest when the stage started, and how long the oldest had waited (seconds).
    files_pending: int = 0
    pending_seconds: float = 0.0
    # Change data capture: seconds from the newest applied event's commit time to the run's start.
    lag_seconds: float = 0.0
    # The versions of the input tables this stage read ("bronze.orders" -> 7), so a user can ask which silver
    # version a gold table was built from; bronze reads landed files and records how many it has ingested in all.
    inputs: dict[str, int] = field(default_factory=dict)
    # The quality checks evaluated for this table in this run (lakehouse.quality.checks.CheckResult), recorded in
    # _meta.checks.
    checks: list[Any] = field(default_factory=list)
    # Where this stage's rejected rows go, quarantine.<name>, when not the table's own name (a change stage's go to its
    # source's: silver.customer_history -> quarantine.customer_cdc).
    quarantined_into: str = ""
    # Gold aggregates: the hot keys of the final step (lakehouse.gold.salting.HotKey), recorded in _meta.hot_keys, and
    # each final task's load (lakehouse.gold.tasks.Finished: rows and bytes), by which its balance is judged.
    hot_keys: list[Any] = field(default_factory=list)
    tasks: list[Any] = field(default_factory=list)

    @property
    def quarantine_name(self) -> str:
        return self.quarantined_into or self.table.split(".", 1)[1]

    def finish(self, status: Status, message: str = "") -> StageResult:
        self.status = status
        self.message = message
        self.ended_at = dt.datetime.now(dt.UTC)
        return self

    @property
    def seconds(self) -> float:
        end = self.ended_at or dt.datetime.now(dt.UTC)
        return (end - self.started_at).total_seconds()

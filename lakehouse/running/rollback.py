"""Rolling back a whole run: every table it committed to goes back to the version it had before, as a new version
(time travel keeps the history), watermarks included, so the next run redoes exactly what was undone.

What a run committed is read from the tables' own logs (each of our commits carries ``lakehouse.run_id``), not from
``_meta.runs``: the quarantine tables and a backfill's several commits per table are found the same way, and a run
killed before its record still shows. A table is restored to the version before the run's first commit on it (a
table the run created is emptied, and its watermarks cleared), consumers first (gold, silver, quarantine, bronze).

A rollback refuses, naming them, when later runs built on the same tables: a later commit on one of them, or a
commit elsewhere that read a version of one that holds the run's work (``inputs`` in its metadata). ``cascade``
rolls those runs back too, and the runs built on them. Each restore is one commit carrying ``stage = rollback``, the
runs it undoes and the version it restored; a table whose restore is there is done, so a rollback cut off midway is
finished by running it again. ``_meta.runs`` gets a row per restored table (status ``rolled_back``), written after
the restores: a rollback killed between its last restore and that record leaves the tables rolled back and no rows
(running it again says every table is already rolled back; the tables' logs keep who restored what).

Landed files the run rejected as unreadable stay in ``_meta.rejected_files``: the next run would reject them again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lakehouse import table
from lakehouse.errors import CommitConflict, ConfigError, LakehouseError
from lakehouse.running import runlog
from lakehouse.running.context import RunContext, StageResult
from lakehouse.settings import Settings
from lakehouse.storage import Storage
from lakehouse.table import Commit, TableRef

STAGE = "rollback"
LAYERS = ("bronze", "silver", "gold", "quarantine")
ORDER = {"gold": 0, "silver": 1, "quarantine": 2, "bronze": 3}  # consumers before what they read


@dataclass(frozen=True)
class Step:
    """One table's restore: from ``version`` (now) back to ``restore_to`` (None: emptied), undoing ``undone``."""

    table: str
    version: int
    restore_to: int | None
    undone: tuple[int, ...]
    runs: tuple[str, ...]
    watermarks: dict[str, tuple[int | None, int | None]]  # app id: (now, after the restore)
    last_ms: int  # when the newest undone commit was made (orders a layer's tables: the later built, the first undone)

    @property
    def ref(self) -> TableRef:
        return TableRef.parse(self.table)

    def describe(self) -> str:
        target = f"empty ({self.runs[0]} created it)" if self.restore_to is None else f"version {self.restore_to}"
        undone, runs = ", ".join(map(str, self.undone)), ", ".join(self.runs)
        return f"{self.table}: version {self.version} -> {target}, undoing version(s) {undone} of {runs}"

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "version": self.version, "restore_to": self.restore_to,
                "undone": list(self.undone), "runs": list(self.runs),
                "watermarks": {k: {"now": a, "after": b} for k, a, b in
                               ((k, *v) for k, v in sorted(self.watermarks.items()))}}


@dataclass(frozen=True)
class Blocker:
    """A later commit built on the work being undone: by run ``run_id`` (None: not written by a run), on ``table``."""

    run_id: str | None
    table: str
    version: int
    why: str


@dataclass(frozen=True)
class Plan:
    """What rolling back ``run_id`` does: the runs undone (the run, and with ``cascade`` those built on it), the
    restores in order, the tables already restored by an earlier rollback, and what blocks it."""

    run_id: str
    runs: tuple[str, ...]
    steps: tuple[Step, ...]
    done: tuple[str, ...] = ()
    blockers: tuple[Blocker, ...] = ()

    def refusal(self) -> str | None:
        """Why the rollback cannot go ahead, naming each later run once with the tables it built on (None: it can)."""
        if not self.blockers:
            return None
        by_run: dict[str | None, list[Blocker]] = {}
        for b in self.blockers:
            by_run.setdefault(b.run_id, []).append(b)
        named = []
        for run, found in list(by_run.items())[:6]:
            tables = ", ".join(f"{b.table} version {b.version} ({b.why})" for b in found[:4])
            tables += f" and {len(found) - 4} more" if len(found) > 4 else ""
            named.append(f"run {run}: {tables}" if run else f"not written by a run: {tables}")
        more = f"; and {len(by_run) - 6} more runs" if len(by_run) > 6 else ""
        runs = sorted(r for r in by_run if r)
        fix = (f"roll them back too with --cascade (runs {', '.join(runs)})" if None not in by_run
               else "undo the versions not written by a run by hand first")
        return f"cannot roll back run {self.run_id}: later work is built on it: {'; '.join(named)}{more}; {fix}"

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "runs": list(self.runs), "steps": [s.as_dict() for s in self.steps],
                "already_rolled_back": list(self.done),
                "blockers": [dataclasses.asdict(b) for b in self.blockers], "refused": self.refusal()}


def live(commits: list[Commit]) -> list[Commit]:
    """The commits whose work the table still holds: those no later restore undid (a restore to version ``t`` undoes
    every version after ``t``), rollbacks themselves left out."""
    kept: list[Commit] = []
    for c in commits:
        if c.info.get("stage") == STAGE:
            to = int(c.info.get("restored_to", "-1"))
            kept = [k for k in kept if k.version <= to]
        else:
            kept.append(c)
    return kept


def plan(storage: Storage, run_id: str, *, cascade: bool = False) -> Plan:
    """What rolling back ``run_id`` would do now (reads the tables' logs only)."""
    logs = {str(ref): table.history(storage, ref) for ref in table.list_tables(storage, LAYERS)}
    kept = {t: live(commits) for t, commits in logs.items()}
    made = {t for t, commits in logs.items() if any(c.run_id == run_id and c.info.get("stage") != STAGE
                                                    for c in commits)}
    if not made:
        if any(c.run_id == run_id for commits in logs.values() for c in commits):
            raise ConfigError(f"run {run_id} is a rollback: what it undid comes back with the next run")
        raise ConfigError(f"run {run_id} committed to no table (its rows in _meta.runs say what it did)")
    runs = {run_id}
    while True:
        firsts = {t: min(c.version for c in cs if c.run_id in runs) for t, cs in kept.items()
                  if any(c.run_id in runs for c in cs)}
        blockers = _built_on(kept, firsts, runs)
        more = {b.run_id for b in blockers if b.run_id} - runs
        if not blockers or not cascade or not more or any(b.run_id is None for b in blockers):
            break
        runs |= more
    steps = []
    for t, first in firsts.items():
        ref = TableRef.parse(t)
        now = logs[t][-1].version
        to = first - 1 if first > 0 else None
        undone = [c for c in kept[t] if c.version >= first]
        marks = table.watermarks_changed(storage, ref, to, now)
        steps.append(Step(
            table=t, version=now, restore_to=to, undone=tuple(c.version for c in undone),
            runs=tuple(dict.fromkeys(str(c.run_id) for c in undone)),
            watermarks={app: (table.txn_version(storage, ref, app), after) for app, after in marks.items()},
            last_ms=max(c.timestamp_ms for c in undone),
        ))
    steps.sort(key=lambda s: (ORDER[s.ref.layer], -s.last_ms, s.table))
    return Plan(run_id=run_id, runs=tuple(sorted(runs)), steps=tuple(steps),
                done=tuple(sorted(made - set(firsts))), blockers=tuple(blockers))


def _built_on(kept: dict[str, list[Commit]], firsts: dict[str, int], runs: set[str]) -> list[Blocker]:
    """Later commits, not by ``runs``, on a table they committed to, or that read one of those tables at a version
    holding their work."""
    found = []
    for t, commits in sorted(kept.items()):
        for c in commits:
            if c.run_id in runs or c.info.get("stage") == "maintain":
                continue  # maintenance only rearranged rows: the restore undoes it with the run
            if t in firsts and c.version > firsts[t]:
                found.append(Blocker(c.run_id, t, c.version, f"a later {c.info.get('stage') or c.operation} commit"))
                continue
            read = c.inputs
            hit = sorted(src for src, v in read.items() if src in firsts and v >= firsts[src])
            if hit:
                found.append(Blocker(c.run_id, t, c.version, f"read {hit[0]} version {read[hit[0]]}"))
    return found


@dataclass
class RollbackReport:
    run_id: str  # the rollback's own run id
    plan: Plan
    results: list[StageResult] = field(default_factory=list)
    error: LakehouseError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def rollback(
    settings: Settings, run_id: str, *, cascade: bool = False, rollback_id: str | None = None,
    call: Callable[[Step, StageResult], None] | None = None,
) -> RollbackReport:
    """Roll back run ``run_id`` (and with ``cascade`` the runs built on it): each table's restore in order, then the
    rollback's rows in ``_meta.runs``. Refused (:class:`ConfigError`) when later runs are built on it. ``call`` hears
    of each restored table as it happens."""
    ctx = RunContext.start(settings, run_id=rollback_id)
    storage = ctx.storage
    found = plan(storage, run_id, cascade=cascade)
    refusal = found.refusal()
    if refusal:
        raise ConfigError(refusal)
    report = RollbackReport(run_id=ctx.run_id, plan=found)
    try:
        for step in found.steps:
            result = StageResult(table=step.table)
            try:
                result.version = table.restore(storage, step.ref, to=step.restore_to, expect=step.version, metadata={
                    "run_id": ctx.run_id, "stage": STAGE, "rolled_back": list(found.runs),
                    "restored_to": -1 if step.restore_to is None else step.restore_to,
                })
            except CommitConflict as e:
                raise CommitConflict(f"a commit landed while rolling back (nothing of this table was changed); run "
                                     f"the rollback again to see what is built on run {run_id} now", table=step.table
                                     ) from e
            except LakehouseError as e:
                raise e.about(step.table) from e.__cause__
            target = "emptied" if step.restore_to is None else f"restored version {step.restore_to}"
            result.finish("rolled_back", f"{target} (was version {step.version}), undoing run(s) "
                                         f"{', '.join(step.runs)}")
            report.results.append(result)
            if call:
                call(step, result)
    except LakehouseError as e:
        report.error = e
    finally:
        runlog.record(ctx, report.results)
    return report

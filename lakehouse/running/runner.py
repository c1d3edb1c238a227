"""Running a pipeline: every stage of the declaration in dependency order (bronze for every source, silver, change
events, gold), each table committed once per run (once per batch of months in a backfill).

The CLI calls :func:`run` and :func:`backfill`; the Prefect flow calls the same stage functions (:func:`ingest`,
:func:`build_silver`, :func:`build_gold`, :func:`record`) as separate tasks. Either way a failed stage stops the run
with an error naming the table; tables committed before it stay committed (each is consistent on its own, and a rerun
picks up from the watermarks). A stage whose commit lost a race to a concurrent run re-plans (:func:`_guarded`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lakehouse import bronze, cdc, engine, gold, silver
from lakehouse.errors import CommitConflict, ConfigError, LakehouseError, StageError
from lakehouse.gold import salting
from lakehouse.ops import maintain as tidy
from lakehouse.ops import maintenance
from lakehouse.quality import checks
from lakehouse.quality.validation import model_dtypes, validate_actions
from lakehouse.running import runlog
from lakehouse.running.context import RunContext, StageResult
from lakehouse.settings import Settings
from lakehouse.spec import Pipeline
from lakehouse.spec import loader as spec_loader

log = logging.getLogger("lakehouse")


def pipeline_of(settings: Settings) -> Pipeline:
    """The pipeline the settings name (a name, ``module:attr`` or a path; see ``lakehouse.spec.loader``), validated."""
    return spec_loader.load(settings.pipeline, project_dir=settings.project_dir, names=settings.pipelines)


@dataclass
class RunReport:
    run_id: str
    results: list[StageResult] = field(default_factory=list)
    error: LakehouseError | None = None
    swept: maintenance.SweepReport | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def result(self, table: str) -> StageResult:
        return next(r for r in self.results if r.table == table)


def ingest(ctx: RunContext, source: str) -> StageResult:
    spec = pipeline_of(ctx.settings)
    required = {c for s in spec.silver if s.source == source for c in model_dtypes(s.model)}
    return _guarded(ctx, str(bronze.ref(source)), lambda: bronze.ingest(ctx, spec.source(source), required))


def build_silver(ctx: RunContext, name: str) -> StageResult:
    spec = pipeline_of(ctx.settings).silver_spec(name)
    return _guarded(ctx, str(silver.ref(name)), lambda: silver.build(ctx, spec))


def replay_silver(ctx: RunContext, name: str) -> StageResult:
    spec = pipeline_of(ctx.settings).silver_spec(name)
    return _guarded(ctx, str(silver.ref(name)), lambda: silver.replay(ctx, spec))


def apply_changes(ctx: RunContext, history: str) -> StageResult:
    """Apply change events to ``silver.<history>`` and the current state it keeps (the Cdc with that history)."""
    spec = pipeline_of(ctx.settings)
    changes = spec.cdc_spec(history)
    return _guarded(ctx, str(silver.ref(history)), lambda: cdc.apply(
        ctx, changes, spec.silver_spec(changes.table), spec.source(changes.source)))


def build_gold(ctx: RunContext, name: str) -> StageResult:
    spec = pipeline_of(ctx.settings)
    table = spec.gold_spec(name)
    return _guarded(ctx, str(gold.ref(name)), lambda: gold.build(ctx, spec, table))


def record(ctx: RunContext, results: list[StageResult]) -> None:
    """The run's record: ``_meta.runs`` (a row per table), ``_meta.checks`` (a row per evaluated check) and
    ``_meta.hot_keys`` (a row per hot key of a gold aggregate)."""
    runlog.record(ctx, results)
    checks.record(ctx.storage, ctx.run_id, [c for r in results for c in r.checks])
    salting.record(ctx.storage, ctx.run_id, [h for r in results for h in r.hot_keys])


# A commit that lost a race is re-planned from the table as the winner left it; more than a few losses in a row means
# something keeps writing to the table, and the run stops rather than spin.
COMMIT_ATTEMPTS = 4


def _guarded(ctx: RunContext, table: str, stage: Callable[[], StageResult]) -> StageResult:
    """Run one stage; re-plan it when its commit lost a race (``CommitConflict``), name the table in any error.

    A commit never retries blindly (it is made against the version the stage planned from, see ``table.commit``):
    the stage starts over from the new version, and its watermark check finds what the winner already did. A stage
    the winner already did completely ends "skipped" and says so.
    """
    ray_before = engine.start_seconds()
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            result = stage()
            break
        except CommitConflict as e:
            if attempt == COMMIT_ATTEMPTS:
                raise e.about(table) from e.__cause__
            log.warning("%s; re-planning (attempt %d of %d)", e.about(table), attempt + 1, COMMIT_ATTEMPTS)
        except LakehouseError as e:
            raise e.about(table) from e.__cause__
        except Exception as e:
            cause = engine.original(e)
            first = (str(cause).strip().splitlines() or [""])[0]
            raise StageError(f"{type(cause).__name__}: {first}", table=table) from e
    notes = [f"backfill {ctx.months[0][:7]}..{ctx.months[1][:7]}" if ctx.months else "", result.message]
    if attempt > 1:
        done = "already done by a concurrent run" if result.status == "skipped" else "re-planned"
        notes.append(f"{done} after {attempt - 1} lost commit race(s)")
    ray_start = engine.start_seconds() - ray_before
    if ray_start:
        notes.append(f"includes starting Ray ({ray_start:.1f}s)")
    result.message = "; ".join(filter(None, notes))
    log.info(
        "%s: %s in %.1fs (in=%d written=%d quarantined=%d duplicate=%d version=%s)",
        result.table, result.status, result.seconds, result.rows_in, result.rows_written,
        result.rows_quarantined, result.rows_duplicate, result.version,
    )
    return result


@dataclass(frozen=True)
class Stage:
    """One step of a run: a table's stage (``bronze``, ``silver`` or ``gold``) with the context it runs in (a
    backfill's carries its batch of months). The CLI and the Prefect flow run the same plan (:func:`plan`)."""

    layer: str
    name: str
    ctx: RunContext

    @property
    def table(self) -> str:
        return f"silver.{self.name}" if self.layer in ("replay", "cdc") else f"{self.layer}.{self.name}"

    @property
    def label(self) -> str:
        """The table, and the batch of months of a backfill: ``silver.orders[1995-01..1995-06]``."""
        months = self.ctx.months
        return f"{self.table}[{months[0][:7]}..{months[1][:7]}]" if months else self.table

    def __call__(self) -> StageResult:
        stages = {"bronze": ingest, "silver": build_silver, "replay": replay_silver, "cdc": apply_changes,
                  "gold": build_gold}
        return stages[self.layer](self.ctx, self.name)


def plan(ctx: RunContext, backfill: tuple[str, str] | None = None, batch_months: int = 12) -> list[Stage]:
    """The stages of a run in the order of the pipeline's dependencies (``Pipeline.stages``: a table after the tables
    it reads). A ``backfill`` (first and last month, ``YYYY-MM``) is instead, per batch of ``batch_months`` months,
    the time-partitioned silver tables and then gold."""
    spec = pipeline_of(ctx.settings)
    check_settings(ctx.settings, spec)
    if backfill is None:
        return [Stage(layer, name, ctx) for layer, name in spec.stages()]
    if ctx.full_refresh:
        raise ConfigError("a backfill rebuilds months, a full refresh everything: ask for one of them")
    stages = []
    for batch in backfill_batches(month_range(*backfill), batch_months):
        bctx = dataclasses.replace(ctx, months=batch)
        stages += [Stage(layer, name, bctx) for layer, name in spec.stages()
                   if layer == "gold" or (layer == "silver" and spec.silver_spec(name).partition)]
    return stages


def check_settings(settings: Settings, spec: Pipeline) -> None:
    """Per-table and per-source settings must name tables and sources of the pipeline (or ``*``): a misspelt name
    would otherwise be a gate silently not applied."""
    tables = {s.name for s in spec.silver} | {"*"}
    sources = set(spec.source_names) | {"*"}
    options: dict[str, tuple[set[str], Any]] = {
        "lookback": (tables, settings.lookback),
        "max_quarantined_share": (tables, settings.max_quarantined_share),
        "batch_rows": (tables, settings.batch_rows),
        "freshness_days": (tables, settings.freshness_days),
        "expect_delivery": (tables, settings.expect_delivery),
        "new_columns": (sources, settings.new_columns),
        "max_ingest_lag_seconds": (sources, settings.max_ingest_lag_seconds),
    }
    for option, (known, names) in options.items():
        for name in names:
            if name not in known:
                raise ConfigError(f"setting {option} names {name!r}, which is not a table or source of pipeline "
                                  f"{spec.name} (known: {', '.join(sorted(known - {'*'}))})")
    for s in spec.silver:
        validate_actions(s.model)
        if not (s.partition and s.partition.time) and s.name in settings.freshness_days:
            raise ConfigError(f"setting freshness_days: {s.name} has no event date (it is not partitioned by time); "
                              "freshness is measured on tables partitioned by a time grain")
    for key in settings.check_actions:
        name, _, check = key.rpartition(".")
        if check not in checks.DEFAULT_ACTIONS or (name and name not in tables | sources):
            raise ConfigError(f"setting check_actions: cannot apply {key!r} (write check or table.check; checks: "
                              f"{', '.join(checks.DEFAULT_ACTIONS)})")


def run(
    settings: Settings,
    *,
    full_refresh: bool = False,
    run_id: str | None = None,
    logical_date: dt.date | None = None,
    call: Callable[[Stage], StageResult] | None = None,
) -> RunReport:
    """Everything landed and not yet processed, bronze → silver → gold, with Ray started once for the run.
    ``logical_date`` is the date the run is for (freshness is measured against it; default today); ``call`` runs
    each stage (see :func:`execute`; the CLI's prints it as it goes)."""
    ctx = RunContext.start(settings, full_refresh=full_refresh, run_id=run_id, logical_date=logical_date)
    return execute(ctx, plan(ctx), call=call)


def backfill(
    settings: Settings, first: str, last: str, *, batch_months: int = 12, run_id: str | None = None,
    call: Callable[[Stage], StageResult] | None = None,
) -> RunReport:
    """Rebuild the silver partitions of months ``first``..``last`` (``YYYY-MM``) from bronze, then what they change
    in gold; in batches of ``batch_months`` months, each batch one commit per table.

    Bronze is left as it is (files landed since the last run wait for the next one), and so are silver tables not
    partitioned by month. The result equals a clean run over the same bronze: a rebuilt partition holds exactly the
    rows a full refresh would put there.
    """
    ctx = RunContext.start(settings, run_id=run_id)
    return execute(ctx, plan(ctx, (first, last), batch_months), call=call)


def replay(settings: Settings, table: str, *, run_id: str | None = None,
           call: Callable[[Stage], StageResult] | None = None) -> RunReport:
    """Re-validate the silver table ``table``'s quarantined rows with its model as it is now, merge those that pass
    into silver (the rest stay), then bring gold up to date with the change."""
    ctx = RunContext.start(settings, run_id=run_id)
    spec = pipeline_of(settings)
    check_settings(settings, spec)
    if table not in {s.name for s in spec.silver}:
        known = ", ".join(s.name for s in spec.silver)
        raise ConfigError(f"no silver table {table!r} in pipeline {spec.name} (known: {known})")
    golds = [Stage(layer, name, ctx) for layer, name in spec.stages() if layer == "gold"]
    return execute(ctx, [Stage("replay", table, ctx), *golds], call=call)


def maintain(settings: Settings, *, retention_hours: float = 168.0, compact: bool = True,
             tables: tuple[str, ...] = (), dry_run: bool = False, run_id: str | None = None) -> tidy.Report:
    """Table maintenance (:mod:`lakehouse.ops.maintain`) under the run's Ray settings: what ``lakehouse maintain``
    and the maintenance flow call."""
    ctx = RunContext.start(settings, run_id=run_id, read_only=dry_run)
    with engine.ray_session(ctx.settings.ray):
        return tidy.maintain(ctx, pipeline_of(settings), retention_hours=retention_hours, compact=compact,
                                    tables=tables, dry_run=dry_run)


def month_range(first: str, last: str) -> list[str]:
    """Every month from ``first`` to ``last`` (``YYYY-MM``), as the ISO date of its first day."""
    try:
        lo, hi = (dt.date.fromisoformat(f"{m}-01") for m in (first, last))
    except ValueError as e:
        raise ConfigError(f"months are written YYYY-MM (got {first!r} and {last!r})") from e
    if lo > hi:
        raise ConfigError(f"the backfill range ends ({last}) before it starts ({first})")
    months = []
    while lo <= hi:
        months.append(lo.isoformat())
        lo = dt.date(lo.year + lo.month // 12, lo.month % 12 + 1, 1)
    return months


def backfill_batches(months: list[str], batch_months: int) -> list[tuple[str, str]]:
    """Consecutive batches of at most ``batch_months`` months, each as (first month, last month)."""
    if batch_months < 1:
        raise ConfigError(f"batch_months must be at least 1, not {batch_months}")
    chunks = [months[i : i + batch_months] for i in range(0, len(months), batch_months)]
    return [(c[0], c[-1]) for c in chunks]


def execute(ctx: RunContext, stages: list[Stage], *, call: Callable[[Stage], StageResult] | None = None) -> RunReport:
    """The run loop, the CLI's and the Prefect flow's: the stages under one Ray session (started on first use), each
    after the stages it depends on, stopping at the first failure, with the run recorded in ``_meta`` whatever
    happens and the sweep after a run that committed. ``call`` runs one stage (the flow passes one that runs it as a
    Prefect task).

    Stages run one at a time, in the plan's order, unless the cluster has the CPUs for more (:func:`parallelism`):
    then independent stages (different tables, none reading what another writes) run at once, each in a thread of
    its own (with the caller's context: a Prefect task started there belongs to the flow run). After a failure no
    further stage starts; those running are waited for and reported, and the first failure is the run's error."""
    report = RunReport(run_id=ctx.run_id)
    run = call or (lambda stage: stage())
    waits = _waits_for(ctx, stages)
    with engine.ray_session(ctx.settings.ray):
        try:
            _schedule(ctx, stages, waits, run, report)
        finally:
            try:
                record(ctx, report.results)
            except Exception:
                if report.ok:
                    raise
                # already failing: the stage's error is the one to report; this one only goes to the log
                log.exception("could not record run %s in _meta.runs", ctx.run_id)
    if report.ok and any(r.status == "committed" for r in report.results):
        # What earlier crashed or outraced attempts left behind, once older than the retention.
        report.swept = sweep(ctx)
    return report


# Auto parallelism (settings.parallel_stages = 0): one stage at a time below this many CPUs in the cluster (a stage
# keeps every CPU of a small cluster busy: a second one only makes both wait), then a stage per this many CPUs, at
# most MAX_PARALLEL_STAGES.
CPUS_PER_PARALLEL_STAGE = 8
MAX_PARALLEL_STAGES = 4


def parallelism(settings: Settings, cluster_cpus: int | None) -> int:
    """How many stages may run at once: ``parallel_stages`` when set, else one per ``CPUS_PER_PARALLEL_STAGE`` CPUs
    of the cluster (``None``: Ray not started yet, one)."""
    if settings.parallel_stages:
        return settings.parallel_stages
    if not cluster_cpus:
        return 1
    return max(1, min(MAX_PARALLEL_STAGES, cluster_cpus // CPUS_PER_PARALLEL_STAGE))


def _waits_for(ctx: RunContext, stages: list[Stage]) -> list[set[int]]:
    """For each stage, the earlier stages it must wait for: within a batch of months (or a whole run), those it
    depends on in the pipeline; a stage of a later batch, or one the pipeline does not know (a replay), waits for
    every stage before it."""
    deps = pipeline_of(ctx.settings).dependencies()
    waits: list[set[int]] = []
    for i, stage in enumerate(stages):
        key = (stage.layer, stage.name)
        if key not in deps:
            waits.append(set(range(i)))
            continue
        waits.append({j for j in range(i) if stages[j].ctx.months != stage.ctx.months
                      or (stages[j].layer, stages[j].name) in deps[key]
                      or (stages[j].layer, stages[j].name) not in deps})
    return waits


def _schedule(ctx: RunContext, stages: list[Stage], waits: list[set[int]], run: Callable[[Stage], StageResult],
              report: RunReport) -> None:
    import concurrent.futures as cf
    import contextvars

    def one(stage: Stage) -> tuple[StageResult, LakehouseError | None]:
        started = dt.datetime.now(dt.UTC)
        try:
            return run(stage), None
        except LakehouseError as e:
            failed = StageResult(table=str(e.context.get("table") or stage.table), started_at=started,
                                 checks=checks.of_error(e))
            return failed.finish("failed", str(e)), e
        except Exception as e:  # not ours (an orchestrator's timeout): still say which table it was about
            error = StageError(f"{type(e).__name__}: {e}", table=stage.table)
            return StageResult(table=stage.table, started_at=started).finish("failed", str(error)), error

    def settle(result: StageResult, error: LakehouseError | None) -> None:
        report.results.append(result)
        if error is not None and report.error is None:
            report.error = error

    pending = list(range(len(stages)))
    done: set[int] = set()
    running: dict[cf.Future[tuple[StageResult, LakehouseError | None]], int] = {}
    workers = max(MAX_PARALLEL_STAGES, ctx.settings.parallel_stages)
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stage") as pool:
        while pending or running:
            width = parallelism(ctx.settings, engine.cluster_cpus())
            if width <= 1 and not running:  # one at a time, in this thread: as a serial loop would
                i = pending.pop(0)
                settle(*one(stages[i]))
                done.add(i)
                if report.error is not None:
                    return
                continue
            while report.error is None and len(running) < width:
                ready = next((i for i in pending if waits[i] <= done), None)
                if ready is None:
                    break
                pending.remove(ready)
                # each stage in a copy of this context: a Prefect flow run's, the observers of its own steps
                running[pool.submit(contextvars.copy_context().run, one, stages[ready])] = ready
            if not running:
                return  # failed, or nothing can start (cannot happen: the plan is in dependency order)
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in sorted(finished, key=running.__getitem__):
                done.add(running.pop(future))
                settle(*future.result())
            if report.error is not None and not running:
                return


def sweep(ctx: RunContext) -> maintenance.SweepReport | None:
    """The end-of-run sweep: housekeeping, so a failure is logged and never fails the run that committed."""
    try:
        found = maintenance.sweep(ctx.storage, retention_seconds=ctx.settings.orphan_retention_seconds)
    except Exception:
        log.warning("the end-of-run sweep failed; `lakehouse sweep` can be run by hand", exc_info=True)
        return None
    if found.count or found.staging:
        log.info("swept %d orphaned files (%d bytes) and %d staging directories", found.count, found.bytes,
                 len(found.staging))
    return found


"""Running a pipeline: bronze for every source, then silver, then gold, each table committed once.

The CLI calls :func:`run`; the Prefect flow calls the same stage functions (:func:`ingest`, :func:`build_silver`,
:func:`build_gold`, :func:`record`) as separate tasks. Either way a failed stage stops the run with an error naming the
table; tables committed before it stay committed (each is consistent on its own, and a rerun picks up from the
watermarks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from lakehouse import bronze, engine, gold, runlog, silver
from lakehouse.context import RunContext, StageResult
from lakehouse.errors import ConfigError, LakehouseError
from lakehouse.settings import Settings
from lakehouse.spec import Pipeline

log = logging.getLogger("lakehouse")


def pipeline(name: str) -> Pipeline:
    if name == "tpch":
        from lakehouse.tpch import PIPELINE

        return PIPELINE
    raise ConfigError(f"unknown pipeline {name!r} (known: tpch)")


@dataclass
class RunReport:
    run_id: str
    results: list[StageResult] = field(default_factory=list)
    error: LakehouseError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def result(self, table: str) -> StageResult:
        return next(r for r in self.results if r.table == table)


def ingest(ctx: RunContext, source: str) -> StageResult:
    return _guarded(str(bronze.ref(source)), lambda: bronze.ingest(ctx, source))


def build_silver(ctx: RunContext, name: str) -> StageResult:
    spec = pipeline(ctx.settings.pipeline).silver_spec(name)
    return _guarded(str(silver.ref(name)), lambda: silver.build(ctx, spec))


def build_gold(ctx: RunContext, name: str) -> StageResult:
    spec = pipeline(ctx.settings.pipeline).gold_spec(name)
    return _guarded(str(gold.ref(name)), lambda: spec.build(ctx, spec))


def record(ctx: RunContext, results: list[StageResult]) -> None:
    runlog.record(ctx, results)


def _guarded(table: str, stage: Callable[[], StageResult]) -> StageResult:
    ray_before = engine.start_seconds()
    try:
        result = stage()
    except LakehouseError as e:
        raise e.about(table) from e.__cause__
    ray_start = engine.start_seconds() - ray_before
    if ray_start:
        result.message = "; ".join(filter(None, [result.message, f"includes starting Ray ({ray_start:.1f}s)"]))
    log.info(
        "%s: %s in %.1fs (in=%d written=%d quarantined=%d duplicate=%d version=%s)",
        result.table, result.status, result.seconds, result.rows_in, result.rows_written,
        result.rows_quarantined, result.rows_duplicate, result.version,
    )
    return result


def run(settings: Settings, *, full_refresh: bool = False, run_id: str | None = None) -> RunReport:
    """Everything landed and not yet processed, bronze → silver → gold, with Ray started once for the run."""
    spec = pipeline(settings.pipeline)
    ctx = RunContext.start(settings, full_refresh=full_refresh, run_id=run_id)
    report = RunReport(run_id=ctx.run_id)
    with engine.ray_session(settings.ray):
        try:
            for source in spec.sources:
                report.results.append(ingest(ctx, source))
            for s in spec.silver:
                report.results.append(build_silver(ctx, s.name))
            for g in spec.gold:
                report.results.append(build_gold(ctx, g.name))
        except LakehouseError as e:
            report.error = e
            report.results.append(StageResult(table=str(e.context.get("table", "?"))).finish("failed", str(e)))
        finally:
            record(ctx, report.results)
    return report

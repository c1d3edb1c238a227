"""The ``medallion`` Prefect flow: a declared pipeline's stages in the order of their dependencies, one task per table.

The flow only orchestrates: settings are built once at this edge, the pipeline is a parameter (a name, module:attr
or path), and the library's run loop (``lakehouse.running.runner.execute``) runs the stages with Ray started once, each
stage as a task that is one library call. On a small cluster the tasks run one at a time (a stage keeps its CPUs
busy); on one with the CPUs for more (``parallel_stages``), independent stages run at once, each task in a thread of
the run loop's, still a task run of this flow run. Idempotency is the library's job (a rerun with nothing
new commits nothing); Prefect retries only errors that say a retry can help.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from typing import Any

from prefect import Task, flow, get_client, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect.states import State

import lakehouse
from lakehouse import LakehouseError, RunContext, StageResult
from lakehouse.ops.maintain import Report
from lakehouse.settings import S3_KEYS, profile_options

SUMMARY_KEY = "medallion-run-summary"
PROGRESS_KEY = "medallion-progress"
PROGRESS_EVERY_SECONDS = 10.0
QUALITY_KEY = "medallion-quality-report"
TASK_TIMEOUT_SECONDS = 3600


def is_transient(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry only errors the library marks as retryable (a commit conflict, a storage hiccup)."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, LakehouseError) and error.retryable


_TASK_OPTIONS: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [5, 30],
    "retry_condition_fn": is_transient,
    "timeout_seconds": TASK_TIMEOUT_SECONDS,
    "cache_policy": NO_CACHE,
    "persist_result": False,
}


@task(name="bronze", task_run_name="bronze.{source}", **_TASK_OPTIONS)
def bronze(ctx: RunContext, source: str) -> StageResult:
    """Ingest the files of ``source`` landed since the last run into its bronze table."""
    return _logged(lakehouse.ingest(ctx, source))


@task(name="silver", task_run_name="silver.{name}", **_TASK_OPTIONS)
def silver(ctx: RunContext, name: str) -> StageResult:
    """Validate, deduplicate and merge the new bronze rows of ``name`` into its silver table."""
    return _logged(lakehouse.build_silver(ctx, name))


@task(name="cdc", task_run_name="cdc.{name}", **_TASK_OPTIONS)
def changes(ctx: RunContext, name: str) -> StageResult:
    """Apply the change events landed since the last run to ``silver.<name>`` and its history."""
    return _logged(lakehouse.running.runner.apply_changes(ctx, name))


@task(name="gold", task_run_name="gold.{name}", **_TASK_OPTIONS)
def gold(ctx: RunContext, name: str) -> StageResult:
    """Rebuild what changed of the gold table ``name``."""
    return _logged(lakehouse.build_gold(ctx, name))


TASKS: dict[str, Task[..., StageResult]] = {"bronze": bronze, "silver": silver, "cdc": changes, "gold": gold}
HEALTH_KEY = "lakehouse-table-health"


@task(name="maintain", **{**_TASK_OPTIONS, "retries": 0})
def maintain(settings: lakehouse.Settings, retention_hours: float, compact: bool) -> Report:
    """Compact, checkpoint, clean the logs and vacuum every table; record each one's health in _meta."""
    return lakehouse.running.runner.maintain(settings, retention_hours=retention_hours, compact=compact)


def _logged(result: StageResult) -> StageResult:
    rate = result.rows_in / result.seconds if result.seconds > 0 else 0.0
    get_run_logger().info(
        "%s: %s in %.1fs, %.0f rows/s (read=%d written=%d quarantined=%d duplicate=%d version=%s)",
        result.table, result.status, result.seconds, rate, result.rows_in, result.rows_written,
        result.rows_quarantined, result.rows_duplicate, result.version,
    )
    for check in result.checks:
        if not check.passed:
            get_run_logger().warning("%s: check %s failed (%s): %s", result.table, check.check, check.action,
                                     check.message)
    return result


@flow(name="medallion", persist_result=False)
def medallion(
    root: str | None = None,
    pipeline: str = "tpch",
    full_refresh: bool = False,
    from_month: str | None = None,
    to_month: str | None = None,
    batch_months: int = 12,
    logical_date: dt.date | None = None,
    progress_every: float = PROGRESS_EVERY_SECONDS,
    maintenance: bool = False,
    retention_hours: float = 168.0,
    credentials: str | None = None,
) -> list[StageResult]:
    """Process everything landed under ``root`` (default: ``$LAKEHOUSE_ROOT``) and not yet processed.

    With ``from_month`` and ``to_month`` (``YYYY-MM``) it is a backfill instead: the silver partitions of those months
    are rebuilt from bronze, then what they change in gold, ``batch_months`` months per commit (one task per table
    per batch, never one per month).

    ``logical_date`` is the date the run is for (freshness checks measure against it); by default the date the flow
    run was scheduled for, so a late or retried run of yesterday's schedule is still judged as yesterday's.

    A stage that takes longer than ``progress_every`` seconds logs how its steps go that often, and the run's
    progress artifact (the flow-run page's progress bar) moves with it.

    With ``maintenance`` (the ``medallion/maintenance`` deployment) it maintains the tables instead: compaction of
    small files sorted by the tables' keys (commits that say dataChange=false and give way to a pipeline run's),
    checkpoints, log clean-up and vacuum of files removed more than ``retention_hours`` ago; each table's health is
    recorded in ``_meta.table_health`` and shown as the ``lakehouse-table-health`` artifact.

    ``credentials`` names the Prefect block that holds an ``s3://`` root's credentials (default:
    ``$LAKEHOUSE_CREDENTIALS_BLOCK``), as ``aws-credentials/<name>`` or ``minio-credentials/<name>`` (prefect-aws's
    blocks) or ``secret/<name>`` (a Secret whose value is a JSON object of ``AWS_*`` keys); its values are taken over
    the worker's ``AWS_*`` variables. The parameter is only the block's name: the secret never is a parameter.
    """
    logger = get_run_logger()
    block = credentials or os.environ.get("LAKEHOUSE_CREDENTIALS_BLOCK") or None
    settings = lakehouse.settings_from_env(root, pipeline=pipeline,
                                           credentials=block_credentials(block) if block else None)
    if maintenance:
        found = maintain(settings, retention_hours, True)
        for t in found.tables:
            logger.info("%s: %s (%d -> %d files%s)", t.table, t.outcome, t.files_before, t.files_after,
                        f", vacuumed {t.vacuumed}" if t.vacuumed else "")
        try:
            create_table_artifact(key=HEALTH_KEY, table=[dict(t.__dict__) for t in found.tables],
                                  description=f"Maintenance `{found.run_id}` of `{settings.root}` "
                                  f"({found.seconds:.1f}s, {found.orphans} orphaned files removed)")
        except Exception:  # a convenience: the health record is in _meta.table_health
            logger.exception("could not publish the table health artifact")
        return []
    scheduled = flow_run.scheduled_start_time
    ctx = RunContext.start(settings, full_refresh=full_refresh,
                           logical_date=logical_date or (scheduled.date() if scheduled else None))
    if (from_month is None) != (to_month is None):
        raise lakehouse.ConfigError("a backfill needs both from_month and to_month")
    months = (from_month, to_month) if from_month and to_month else None
    stages = lakehouse.running.runner.plan(ctx, months, batch_months)
    what = f"backfill of {from_month}..{to_month}" if months else f"full_refresh={full_refresh}"
    logger.info("run %s of pipeline %s on %s (%s): %d stages", ctx.run_id, pipeline, settings.root, what, len(stages))
    started = time.monotonic()

    progress = _Progress(ctx, len(stages), progress_every)

    def as_task(stage: lakehouse.running.runner.Stage) -> StageResult:
        with lakehouse.engine.observed(progress.observer(stage.label)):
            try:
                return TASKS[stage.layer].with_options(task_run_name=stage.label)(stage.ctx, stage.name)
            finally:
                progress.stage_done(stage.label)

    # The library's run loop (one Ray for the run, stages one at a time, the run recorded whatever happens), each
    # stage as a Prefect task.
    report = lakehouse.running.runner.execute(ctx, stages, call=as_task)
    _publish(ctx, report.results, time.monotonic() - started, api_down=progress.api_down)
    if report.swept and (report.swept.count or report.swept.staging):
        logger.info("swept %d orphaned files and %d staging directories", report.swept.count,
                    len(report.swept.staging))
    if report.error is not None:
        raise report.error
    return report.results


CREDENTIAL_BLOCKS = ("aws-credentials", "minio-credentials", "secret")


def block_credentials(ref: str) -> dict[str, str]:
    """The S3 storage options (``AWS_*`` keys) held by the Prefect block ``ref`` (``<block type>/<name>``).

    The block document is read from the API with its secrets; prefect-aws need not be installed where the flow runs.
    No error message carries a value of the block."""
    slug, _, name = ref.partition("/")
    if slug not in CREDENTIAL_BLOCKS or not name:
        raise lakehouse.ConfigError(f"credentials {ref!r}: name a block as <type>/<name>, the type one of "
                                    f"{', '.join(CREDENTIAL_BLOCKS)} (e.g. aws-credentials/lakehouse-s3)")
    try:
        with get_client(sync_client=True) as client:
            document = client.read_block_document_by_name(name=name, block_type_slug=slug, include_secrets=True)
    except ObjectNotFound:
        raise lakehouse.ConfigError(f"credentials block {ref!r} is not on the Prefect server: create it (the UI's "
                                    "Blocks page, or the block's .save() in Python) or correct the name") from None
    return credentials_from_block(ref, document.data)


def credentials_from_block(ref: str, data: dict[str, Any]) -> dict[str, str]:
    """A credentials block's fields (``data`` of its document) as storage options: prefect-aws's AwsCredentials
    (keys, session token, region, ``profile_name`` resolved on this machine, the client parameters' endpoint) or
    MinIOCredentials (root user and password), or a Secret whose value is a JSON object (``AWS_ACCESS_KEY_ID`` or
    ``aws_access_key_id``, ``region_name``, ``endpoint_url``, ...)."""
    slug = ref.partition("/")[0]
    endpoint = (data.get("aws_client_parameters") or {}).get("endpoint_url")
    if slug == "aws-credentials":
        if data.get("assume_role_arn"):
            raise lakehouse.ConfigError(f"credentials block {ref!r} assumes a role (assume_role_arn): not supported; "
                                        "give the role's keys, or a profile that assumes it (profile_name)")
        found = {"AWS_ACCESS_KEY_ID": data.get("aws_access_key_id"),
                 "AWS_SECRET_ACCESS_KEY": data.get("aws_secret_access_key"),
                 "AWS_SESSION_TOKEN": data.get("aws_session_token"), "AWS_REGION": data.get("region_name"),
                 "AWS_ENDPOINT_URL": endpoint}
        if data.get("profile_name") and not found["AWS_ACCESS_KEY_ID"]:
            found = {**profile_options(data["profile_name"], os.environ), **{k: v for k, v in found.items() if v}}
    elif slug == "minio-credentials":
        found = {"AWS_ACCESS_KEY_ID": data.get("minio_root_user"),
                 "AWS_SECRET_ACCESS_KEY": data.get("minio_root_password"), "AWS_REGION": data.get("region_name"),
                 "AWS_ENDPOINT_URL": endpoint}
    else:
        value = data.get("value")
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                value = None
        if not isinstance(value, dict):
            raise lakehouse.ConfigError(f"credentials block {ref!r}: the Secret's value must be a JSON object of "
                                        'AWS_* keys, e.g. {"AWS_ACCESS_KEY_ID": "...", "AWS_SECRET_ACCESS_KEY": "..."}')
        aliases = {"REGION_NAME": "AWS_REGION", "REGION": "AWS_REGION", "ENDPOINT_URL": "AWS_ENDPOINT_URL"}
        found = {aliases.get(str(k).upper(), str(k).upper()): v for k, v in value.items()}
        unknown = sorted(k for k in found if k not in S3_KEYS)
        if unknown:
            raise lakehouse.ConfigError(f"credentials block {ref!r}: unknown keys {unknown} (known: "
                                        f"{', '.join(S3_KEYS)})")
    return {k: str(v) for k, v in found.items() if v not in (None, "")}


class _Progress:
    """The run's progress on its flow-run page (a progress artifact: the share of stages done, the running one's share
    of its step included) and in its logs (a line per step of a stage longer than ``every`` seconds, that often).
    Never fails the run: an API that does not answer costs a warning."""

    def __init__(self, ctx: RunContext, total: int, every: float) -> None:
        self.total, self.done, self.last, self.every = max(total, 1), 0, 0.0, every
        self.id: Any = None
        self.api_down = False  # a call to the API failed in this run: no further one is made to wait on it
        try:
            self.id = create_progress_artifact(0.0, key=PROGRESS_KEY,
                                               description=f"Run `{ctx.run_id}`: {total} stages")
        except Exception as e:
            self.api_down = True
            get_run_logger().warning("could not create the run's progress artifact: %s: %s", type(e).__name__, e)

    def observer(self, label: str) -> Any:
        began = time.monotonic()

        def heard(done: lakehouse.engine.Done) -> None:
            now = time.monotonic()
            if now - self.last < self.every or now - began < self.every or not done.total:
                return
            self.last = now
            _logger().info("%s: %s %d/%d (%d%%)%s, %.0fs", label, done.label, done.items, done.total,
                           100 * done.items // done.total, f", {done.rows:,} rows" if done.rows else "", done.seconds)
            self._update(self.done + done.items / done.total, f"{label}: {done.label} {done.items}/{done.total}")

        return heard

    def stage_done(self, label: str) -> None:
        self.done += 1
        self._update(self.done, f"{label} done ({self.done} of {self.total} stages)")

    def _update(self, stages: float, description: str) -> None:
        if self.id is None:
            return
        try:
            update_progress_artifact(self.id, round(100 * stages / self.total, 1), description=description)
        except Exception as e:
            # The API is down or slow: the run goes on (Prefect's task states are events, sent when they can be),
            # and no further update makes it wait the API's timeout again.
            self.id, self.api_down = None, True
            get_run_logger().warning("could not update the run's progress artifact, and will not try again in this "
                                     "run: %s: %s", type(e).__name__, e)


def _logger() -> Any:
    """The running task's (or flow's) logger, whose lines show on its run's page; outside a run, a plain one."""
    try:
        return get_run_logger()
    except Exception:
        return logging.getLogger("medallion")


def _publish(ctx: RunContext, results: list[StageResult], seconds: float, *, api_down: bool = False) -> None:
    """Publish the per-table summary and the quality report as artifacts (the run is already recorded)."""
    logger = get_run_logger()
    failed = [r.table for r in results if r.status == "failed"]
    logger.info("run %s: %d tables in %.1fs%s", ctx.run_id, len(results), seconds,
                f", failed: {', '.join(failed)}" if failed else "")
    if api_down:
        logger.warning("the Prefect API did not answer during run %s: its artifacts are not published (its record is "
                       "in _meta.runs: lakehouse status, or lakehouse query \"SELECT * FROM _meta.runs WHERE run_id = "
                       "'%s'\")", ctx.run_id, ctx.run_id)
        return
    try:
        create_table_artifact(
            key=SUMMARY_KEY,
            table=[_row(r) for r in results],
            description=f"Run `{ctx.run_id}` of pipeline `{ctx.settings.pipeline}` on `{ctx.settings.root}` "
            f"({seconds:.1f}s{', full refresh' if ctx.full_refresh else ''})",
        )
        create_markdown_artifact(key=QUALITY_KEY, markdown=lakehouse.quality_report(ctx, results),
                                 description=f"Quality report of run `{ctx.run_id}`")
    except Exception:  # the artifacts are a convenience: never let them hide the run's own outcome
        logger.exception("could not publish the run's artifacts")


def _row(r: StageResult) -> dict[str, Any]:
    return {
        "table": r.table,
        "status": r.status,
        "rows_read": r.rows_in,
        "rows_written": r.rows_written,
        "rows_quarantined": r.rows_quarantined,
        "rows_duplicate": r.rows_duplicate,
        "files_rejected": r.files_rejected,
        "delta_version": r.version,
        "seconds": round(r.seconds, 2),
        "message": r.message,
    }

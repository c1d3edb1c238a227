"""The change stage: bronze change events -> silver history (SCD2) -> silver current state (SCD1), one commit
per table. Workers parse each new bronze file (:mod:`.events`), rebuild the history of the keys it touches, and MERGE
their current state into the silver table."""


from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from lakehouse import bronze, engine, silver, table
from lakehouse.bronze import landed
from lakehouse.cdc.debezium import Options
from lakehouse.cdc.events import EVENT, SNAPSHOT_LSN, TIMESTAMP, chains, current, parse_events
from lakehouse.quality import checks, quarantine
from lakehouse.quality.validation import ROW_ID, model_dtypes, model_metadata
from lakehouse.running.context import RunContext, StageResult
from lakehouse.silver.reports import Finding
from lakehouse.silver.tasks import summaries
from lakehouse.spec import Cdc, Silver, Source
from lakehouse.storage import Storage
from lakehouse.storage.files import DataFile, write_data_file
from lakehouse.storage.frames import read_files, to_arrow, write_frame
from lakehouse.table import merge, ranges


def app_id(name: str) -> str:
    return silver.cdc_app_id(name)


def truncates_app_id(name: str) -> str:
    """Recorded on the history table: how many truncates were applied (each one's LSN and commit time under
    ``<id>.<i>.lsn`` and ``<id>.<i>.ms``), so an event older than a truncate that arrives after it is still closed
    by it."""
    return f"{silver.cdc_app_id(name)}.truncates"


def current_app_id(name: str) -> str:
    """Recorded on the history table when applying a batch left the current state as it was (no commit to it, so
    tables built from it do not see a change)."""
    return f"{silver.cdc_app_id(name)}.current"


def history_schema(spec: Any) -> pa.Schema:
    """The history table: the model's columns, lineage of the event that opened the version, then validity."""
    base = silver.arrow_schema(spec)
    fields = [f for f in base if f.name not in ("_run_id",)]
    fields += [pa.field("valid_from", pa.timestamp("us", tz="UTC")), pa.field("valid_to", pa.timestamp("us", tz="UTC")),
               pa.field("is_current", pa.bool_()), pa.field("is_deleted", pa.bool_()),
               # the operation that opened the version (c, u, r; d for a tombstone; none for the snapshot's rows)
               pa.field("_op", pa.string()), pa.field("_lsn", pa.int64()),
               pa.field("_end_lsn", pa.int64()), pa.field("_end_op", pa.string()),
               # the commit times of the events that opened and closed the version, in ms (for the lag)
               pa.field("_ts_ms", pa.int64()), pa.field("_end_ts_ms", pa.int64()),
               # the columns the opening event did not carry (JSON list): their values are the version before's
               pa.field("_unavailable", pa.string())]
    return pa.schema(fields)


def apply(ctx: RunContext, cdc: Cdc, spec: Silver, declared: Source | None = None) -> StageResult:
    """Apply the change events landed since the last run to ``silver.<history>`` and ``silver.<name>``, one commit
    each (history first: the current state is read back from it), each carrying the bronze version it applied."""
    result = StageResult(table=str(silver.ref(cdc.history)), quarantined_into=cdc.source)
    storage = ctx.storage
    source = table.snapshot(storage, bronze.ref(cdc.source))
    target = table.snapshot(storage, silver.ref(cdc.name))
    history = table.snapshot(storage, silver.ref(cdc.history))
    result.version = history.version
    if not source.exists or not target.exists:
        missing = source.ref if not source.exists else target.ref
        return result.finish("skipped", f"no {missing} yet")
    assert source.version is not None and target.schema is not None
    result.inputs = {str(source.ref): source.version}
    app = app_id(cdc.name)
    applied = table.txn_version(storage, target.ref, app)
    in_history = table.txn_version(storage, history.ref, app)
    unchanged = table.txn_version(storage, history.ref, current_app_id(cdc.name))
    # The snapshot stage rewrote the table (a full refresh, a new snapshot file) and reset our watermark, or a full
    # refresh: apply everything again, from the table as its snapshot left it.
    rebuild = ctx.full_refresh or applied == -1
    done_history = not rebuild and in_history is not None and in_history >= source.version
    current_mark = max(-1 if applied is None else applied, -1 if unchanged is None else unchanged)
    done_current = not rebuild and current_mark >= source.version
    pending, _ = bronze.pending_files(storage, source, source=declared)
    result.files_pending = len(pending)
    if done_history and done_current:
        result.lag_seconds = _lag(history, ctx)
        return result.finish("skipped", "up to date")
    # Files since the older of the two watermarks (all of them when either has never been set, or on a rebuild).
    watermarks = [None if rebuild else in_history, None if rebuild or current_mark < 0 else current_mark]
    since = None if None in watermarks else min(m for m in watermarks if m is not None)
    new_files = [f for f in silver.files_since(storage, source, since) if f.rows]
    staging = f"_staging/{ctx.run_id}/cdc/{cdc.name}"
    common = {"storage": storage, "spec": spec, "staging": staging, "run_id": ctx.run_id}
    try:
        options = Options(cdc.decimal_handling, tuple(dict(cdc.scales).items()), cdc.unavailable_value)
        parsed: list[Parsed] = engine.map_items([f.item() for f in new_files], _parse_file,
                                                fn_kwargs={**common, "source": cdc.source, "options": options,
                                                           "truncate": cdc.truncate})
        events = [m.events for m in parsed if m.events is not None]
        rejected = [f for m in parsed for f in m.quarantined]
        result.files_in = len(new_files)
        result.rows_in = sum(m.rows for m in parsed)
        result.rows_quarantined = sum(f.rows for f in rejected)
        skipped = sum(m.skipped for m in parsed)
        # Before any commit: a batch with too large a share of its events quarantined leaves no trace.
        gate = checks.gates(cdc.table, model_metadata(spec.model), ctx.settings)
        if gate.max_quarantined_share is not None:
            worst = max((dataclasses.asdict(f) for m in parsed for f in m.findings), key=lambda f: f["n"], default=None)
            result.checks.append(checks.quarantined_share(gate, result.rows_in - skipped, result.rows_quarantined,
                                                          gate.max_quarantined_share, worst))
        checks.enforce(result.checks)
        info = {"run_id": ctx.run_id, "stage": "cdc", "inputs": result.inputs}
        quarantine.commit(storage, cdc.source, rejected, stage="silver", replace=ctx.full_refresh, metadata=info)
        event_items = [{"path": f.path, "partition_values": {}} for f in events]
        seed = rebuild or not history.exists
        new_truncates = sorted({t for m in parsed for t in m.truncates})
        truncates = _truncates(storage, history, cdc.name, new_truncates, seed=seed)
        marks: dict[str, int] = {}  # watermarks still to record on the history (nothing changed to carry them)
        if not done_history:
            history, changed = _commit_history(ctx, cdc, spec, history, target, event_items, staging, info,
                                               source.version, seed=seed, truncates=truncates,
                                               all_keys=bool(new_truncates))
            if not changed:  # (a truncate of an empty table changes nothing, and is recorded all the same)
                marks |= {app: source.version, **(truncates if new_truncates else {})}
        if not done_current:
            item = {"events": event_items, "history": [ranges.ranged_item(f, spec.keys[0]) for f in history.files],
                    "all_keys": bool(new_truncates)}
            kwargs = {**common, "history_rel": history.ref.rel, "target_schema": target.schema}
            staged: list[DataFile] = engine.map_items([item], _current_rows, fn_kwargs=kwargs)
            merged = merge.merge(
                storage, target, staged, staging,
                merge.MergeSpec(keys=tuple(spec.keys), delete_column="__delete"), target.schema, run_id=ctx.run_id,
                max_rows=ctx.settings.target_file_rows, app_transactions={app: source.version}, metadata=info,
            )
            result.rows_written = merged.counts["inserted"] + merged.counts["updated"]
            result.rows_duplicate = merged.counts["unchanged"]
            current_version = merged.version
            if merged.version == target.version and applied == -1:
                # after a rewrite by the snapshot stage the table must carry the watermark again, change or not
                current_version = table.commit(storage, table.snapshot(storage, target.ref), schema=target.schema,
                                               adds=[], app_transactions={app: source.version}, metadata=info)
            elif merged.version == target.version:
                # the current state is as it was: recorded on the history, not as a new version of the table
                marks[current_app_id(cdc.name)] = source.version
            counts = merged.counts
            result.message = (f"{cdc.name} at version {current_version}: {counts['inserted']} inserted, "
                              f"{counts['updated']} updated, {counts['deleted']} deleted")
            if new_truncates:
                result.message += f"; {len(new_truncates)} truncate(s) applied"
        if skipped:
            result.message = "; ".join(filter(None, [
                result.message, f"{skipped} event(s) that change no row (logical messages, tombstones) skipped"]))
        if marks:
            table.commit(storage, table.snapshot(storage, history.ref), schema=history_schema(spec), adds=[],
                         app_transactions=marks, metadata=info)
        history = table.snapshot(storage, history.ref)
        result.version = history.version
        result.lag_seconds = _lag(history, ctx)
    finally:
        storage.delete_dir(staging)
    return result.finish("committed", result.message)


def _lag(history: table.Snapshot, ctx: RunContext) -> float:
    """Seconds from the newest applied event's commit time to the run's start (from the log's statistics)."""
    newest = [int(v) for f in history.files for c in ("_ts_ms", "_end_ts_ms") if (v := f.maxs.get(c)) is not None]
    if not newest:
        return 0.0
    return max(0.0, ctx.started_at.timestamp() - max(newest) / 1000)


def _commit_history(
    ctx: RunContext, cdc: Cdc, spec: Silver, history: table.Snapshot, target: table.Snapshot,
    events: list[dict[str, Any]], staging: str, info: dict[str, Any], version: int, *, seed: bool,
    truncates: dict[str, int], all_keys: bool,
) -> tuple[table.Snapshot, bool]:
    """Rebuild the chains of the keys the events touch, in one commit; with ``seed`` (the first time, or after the
    snapshot stage rewrote the table) the table's rows are the first version of every key and every event is
    applied again. Returns the history and whether it changed (no commit when it did not: the caller records the
    watermark)."""
    storage = ctx.storage
    key = spec.keys[0]
    item = {"events": events, "history": [] if seed else [ranges.ranged_item(f, key) for f in history.files],
            "seed": [f.item() for f in target.files] if seed else [], "all_keys": all_keys,
            "truncates": _truncate_list(truncates, cdc.name)}
    kwargs = {"storage": storage, "spec": spec, "history_rel": silver.ref(cdc.history).rel, "staging": staging,
              "run_id": ctx.run_id, "max_rows": ctx.settings.target_file_rows}
    [out] = engine.map_items([item], _rebuild_history, fn_kwargs=kwargs)
    assert isinstance(out, Rewrite)
    removed, adds = set(out.removed), list(out.added)
    removes = list(history.files) if seed else [f for f in history.files if f.path in removed]
    if not adds and not removes and history.exists:
        return history, False  # every touched chain is as it was (redelivered or already applied events)
    table.commit(storage, history, schema=history_schema(spec), adds=adds, removes=removes,
                 app_transactions={app_id(cdc.name): version, **truncates}, metadata=info)
    return table.snapshot(storage, history.ref), True


def _truncates(storage: Storage, history: table.Snapshot, name: str, new: list[tuple[int, int]], *,
               seed: bool) -> dict[str, int]:
    """The truncates applied so far (none when every event is applied again) and ``new`` ones ((LSN, commit ms)),
    as the app transactions that record them on the history table."""
    known: set[tuple[int, int]] = set()
    app = truncates_app_id(name)
    if not seed and history.exists:
        count = table.txn_version(storage, history.ref, app) or 0
        ids = [f"{app}.{i}.{part}" for i in range(count) for part in ("lsn", "ms")]
        found = table.txn_versions(storage, history.ref, ids)
        known = {(found[f"{app}.{i}.lsn"] or 0, found[f"{app}.{i}.ms"] or 0) for i in range(count)}
    every = sorted(known | set(new))
    if not every:
        return {}
    marks = {app: len(every)}
    for i, (lsn, ms) in enumerate(every):
        marks |= {f"{app}.{i}.lsn": lsn, f"{app}.{i}.ms": ms}
    return marks


def _truncate_list(marks: dict[str, int], name: str) -> list[tuple[int, int]]:
    app = truncates_app_id(name)
    return [(marks[f"{app}.{i}.lsn"], marks[f"{app}.{i}.ms"]) for i in range(marks.get(app, 0))]


# --- worker side -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parsed:
    """A bronze file of change events parsed: its rows, the staged valid events and the quarantined ones (a file per
    landed file)."""

    rows: int
    events: DataFile | None
    quarantined: tuple[DataFile, ...]
    skipped: int = 0  # events that change no row (logical messages, wrapped tombstones)
    truncates: tuple[tuple[int, int], ...] = ()  # (LSN, commit ms) of the truncates among the events
    findings: tuple[Finding, ...] = ()  # why events were quarantined, per check and column


@dataclass(frozen=True)
class Rewrite:
    """The history files a rebuild of touched chains replaces (by path) and the files it wrote (uncommitted)."""

    removed: tuple[str, ...] = ()
    added: tuple[DataFile, ...] = ()


def _parse_file(
    item: dict[str, Any], *, storage: Storage, spec: Silver, staging: str, run_id: str, source: str,
    options: Options, truncate: str,
) -> list[Parsed]:
    raw = landed.read_new(storage, source, item)
    qfiles: list[DataFile] = []
    f = None
    parse = parse_events(raw, spec.model, tuple(spec.keys), options, truncate)
    events, rejected = parse.events, parse.rejected
    failing = rejected.filter(pl.col("action") == "fail")
    if failing.height:  # a model rule (or a truncate) whose action is fail: the run stops, naming the event
        raise silver.row_failure(str(silver.ref(spec.name)), raw, failing)
    if rejected.height:  # the event as landed, with the reason
        for q in quarantine.by_landed_file(_rejected_events(raw, rejected, run_id)):
            qfiles.append(quarantine.write(storage, source, q, stage="silver",
                                           source_file=q.column("_source_file")[0].as_py(), run_id=run_id))
    if events.height:
        f = write_data_file(storage, staging, events.to_arrow(), prefix="events")
    cut = events.filter(pl.col("_op") == "t")
    truncates = tuple(zip(cut.get_column("_lsn").to_list(), cut.get_column("_ts_ms").to_list(), strict=True))
    return [Parsed(raw.height, f, tuple(qfiles), parse.skipped, truncates, tuple(summaries(raw, rejected, "reject")))]


def _rejected_events(raw: pl.DataFrame, rejected: pl.DataFrame, run_id: str) -> pa.Table:
    """Quarantine records of rejected events: the event's text as landed is the row."""
    rows = raw.with_row_index(ROW_ID).join(rejected.with_columns(pl.col(ROW_ID).cast(pl.UInt32)), on=ROW_ID)
    return quarantine.records(
        stage="silver", checks=rows.get_column("check").to_list(), columns=rows.get_column("column").to_list(),
        values=rows.get_column("value").to_list(), failures=rows.get_column("failures").to_list(),
        rows=rows.get_column("event").to_list(), source_files=rows.get_column("_source_file").to_list(),
        source_lines=rows.get_column("_source_line").to_list(), run_id=run_id,
    )


def _columns(spec: Silver) -> list[str]:
    return [*model_dtypes(spec.model), "_source_file", "_source_line", "_ingested_at"]


def _rebuild_history(
    item: dict[str, Any], *, storage: Storage, spec: Silver, history_rel: str, staging: str, run_id: str,
    max_rows: int,
) -> list[Rewrite]:
    """Rebuild the chains of the keys the events touch. Files are read one at a time (those whose key range may hold
    a touched key), so memory is one file plus the touched keys' versions, however large the history. The files
    holding a touched key are rewritten without it, and the rebuilt chains go with the last of them (else in a new
    file), so no file is left holding part of a rebuilt chain. A batch with a truncate (``all_keys``) touches every
    key."""
    keys = list(spec.keys)
    columns = _columns(spec)
    schema = history_schema(spec)
    events = read_files(storage, staging, item["events"]) if item["events"] else pl.DataFrame()
    touched = _touched(events, keys, schema)
    truncates = pl.DataFrame(item["truncates"], schema={"_lsn": pl.Int64, "_ts_ms": pl.Int64}, orient="row")
    all_keys = item["all_keys"]
    out: list[DataFile] = []

    def versions_of(existing: pl.DataFrame) -> pl.DataFrame:
        events_ = events.with_columns(pl.col("_ingested_at").cast(TIMESTAMP)).select(*columns, *EVENT)
        return chains(existing, events_, tuple(keys), columns, truncates, all_keys=all_keys)

    def written(df: pl.DataFrame) -> list[DataFile]:
        return write_frame(storage, history_rel, df.select(schema.names), schema, prefix=f"part-{run_id}",
                           max_rows=max_rows) if df.height else []

    if item["seed"]:
        # every row of the table is the first version of its key, valid since before the events began (the
        # snapshot's own time is unknown: not when we ingested it)
        old = []
        for f in item["seed"]:
            rows = read_files(storage, silver.ref(spec.name).rel, [f]).select(columns).with_columns(
                pl.lit(None, TIMESTAMP).alias("valid_from"), pl.lit(None, TIMESTAMP).alias("valid_to"),
                pl.lit(True).alias("is_current"), pl.lit(False).alias("is_deleted"),
                pl.lit(None, pl.String).alias("_op"),
                pl.lit(SNAPSHOT_LSN, pl.Int64).alias("_lsn"), pl.lit(None, pl.Int64).alias("_end_lsn"),
                pl.lit(None, pl.String).alias("_end_op"), pl.lit(None, pl.Int64).alias("_ts_ms"),
                pl.lit(None, pl.Int64).alias("_end_ts_ms"), pl.lit(None, pl.String).alias("_unavailable"),
            )
            old.append(rows if all_keys else rows.join(touched, on=keys, how="semi"))
            if not all_keys:
                out += written(rows.join(touched, on=keys, how="anti"))
        if events.height:
            existing = pl.concat(old, how="vertical_relaxed") if old else pl.DataFrame(schema=_polars(schema))
            out += written(versions_of(existing))
        return [Rewrite(added=tuple(out))]
    if not events.height:
        return [Rewrite()]
    first = touched.get_column(keys[0])
    hits: list[pl.DataFrame] = []
    hit_files: list[dict[str, Any]] = []
    for f in item["history"]:
        if not all_keys and not ranges.may_hold(f, first):
            continue
        hit = read_files(storage, history_rel, [f])
        hit = hit if all_keys else hit.join(touched, on=keys, how="semi")
        if hit.height:
            hits.append(hit)
            hit_files.append(f)
    existing = pl.concat(hits, how="vertical_relaxed") if hits else pl.DataFrame(schema=_polars(schema))
    versions = versions_of(existing)
    if all_keys:
        touched = pl.concat([touched, existing.select(keys)]).unique()
    if existing.select(schema.names).sort([*keys, "_lsn"]).equals(versions.select(schema.names).sort([*keys, "_lsn"])):
        return [Rewrite()]  # every touched chain is as it was
    for i, f in enumerate(hit_files):
        kept = read_files(storage, history_rel, [f]).join(touched, on=keys, how="anti")
        if i + 1 < len(hit_files):
            out += written(kept)
        else:  # the rebuilt chains go with the last rewritten file: no extra small file
            versions = pl.concat([kept.select(schema.names), versions.select(schema.names)], how="vertical_relaxed")
    out += written(versions)
    return [Rewrite(removed=tuple(f["path"] for f in hit_files), added=tuple(out))]


def _touched(events: pl.DataFrame, keys: list[str], schema: pa.Schema) -> pl.DataFrame:
    """The keys the events name (a truncate names none)."""
    if not events.height:
        return pl.DataFrame(schema=_polars(schema)).select(keys)
    return events.select(keys).unique().filter(pl.all_horizontal(pl.col(k).is_not_null() for k in keys))


def _current_rows(
    item: dict[str, Any], *, storage: Storage, spec: Silver, staging: str, run_id: str, history_rel: str,
    target_schema: pa.Schema,
) -> list[DataFile]:
    """The current state of the keys the events touch, read back from the committed history, one file at a time (those
    whose key range may hold a touched key)."""
    keys = list(spec.keys)
    if not item["events"]:
        return []
    history = history_schema(spec)
    touched = _touched(read_files(storage, staging, item["events"], columns=keys), keys, history)
    first = touched.get_column(keys[0])
    if item["all_keys"]:  # a truncate: every key of the history
        found = [read_files(storage, history_rel, [f]) for f in item["history"]]
        touched = pl.concat([touched, *(f.select(keys) for f in found)]).unique()
    else:
        found = [read_files(storage, history_rel, [f]).join(touched, on=keys, how="semi")
                 for f in item["history"] if ranges.may_hold(f, first)]
    versions = pl.concat(found, how="vertical_relaxed") if found else pl.DataFrame(schema=_polars(history))
    rows = current(versions, touched, tuple(spec.keys))
    full = pa.schema([*target_schema, pa.field("__delete", pa.bool_())])
    rows = rows.with_columns(pl.lit(None).alias(n) for n in full.names if n not in rows.columns)
    return [write_data_file(storage, staging, to_arrow(rows.select(full.names), full), prefix="current")]


def _polars(schema: pa.Schema) -> dict[str, Any]:
    return dict(pl.from_arrow(schema.empty_table()).schema)  # type: ignore[union-attr]


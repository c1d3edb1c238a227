"""Change data capture from Debezium change events: parsing envelopes, and the per-key version chains that give both
the current state (SCD type 1) and the history (SCD type 2).

An event is a Debezium envelope landed as one NDJSON line (bronze keeps its top-level fields as text): ``op`` (``c``
create, ``u`` update, ``d`` delete, ``r`` snapshot read), ``before`` and ``after`` row images, ``source`` with the
log position ``lsn`` and the commit time ``ts_ms``. A tombstone (a ``null`` line after a delete) carries nothing and
is skipped at ingest.

Applying events "one by one in LSN order, ignoring an event older than the row's last applied LSN" leaves each key in
the state of its highest-LSN event (its after-image, or absent after a delete). So the state does not depend on the
order files arrive in, duplicates (same key and LSN) are harmless, and a late event changes the history but not the
current state unless it is the newest. The history of a key is its chain of events sorted by LSN: each create, update
or read opens a version (``valid_from`` = its commit time) that the next event of the key closes (``valid_to``), and a
delete only closes (dbt's ``hard_deletes = 'invalidate'``). Rows of the table before any event (its snapshot) are the
first version, at LSN -1.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pyarrow as pa

from lakehouse import bronze, engine, merge, quarantine, silver, table
from lakehouse.context import RunContext, StageResult
from lakehouse.files import DataFile, write_data_file
from lakehouse.frames import read_files, to_arrow, write_frame
from lakehouse.spec import Cdc, Silver, Source
from lakehouse.storage import Storage
from lakehouse.validation import ROW_ID, cast_text, model_dtypes, split_valid

OPS = ("c", "u", "d", "r")
ENVELOPE = ("op", "before", "after", "source", "ts_ms")
SNAPSHOT_LSN = -1
# History columns after the model's: validity, whether current, and the events that opened and closed the version.
TIMESTAMP = pl.Datetime("us", "UTC")
EVENT = {"_op": pl.String, "_lsn": pl.Int64, "_ts_ms": pl.Int64}


def parse_events(raw: pl.DataFrame, model: Any, keys: tuple[str, ...]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Typed change events from bronze envelope rows, and the rejected rows.

    Returns ``(events, rejected)``: events have the model's columns (an after-image; a delete has only its keys, from
    the before-image), ``_op``, ``_lsn``, ``_ts_ms`` and the other columns of ``raw`` (lineage); rejected has
    ``ROW_ID`` (row of ``raw``), ``check``, ``column``, ``value`` and ``failures`` (JSON), like a validation split.
    A row is rejected for an unknown ``op``, a missing or unparseable row image (``after`` for c/u/r, ``before`` for
    d), a ``source`` without an integer ``lsn``, or an image that fails the model.
    """
    columns = list(model_dtypes(model))
    # A file whose envelopes all lack a field has no such column in bronze.
    raw = raw.with_columns(pl.lit(None, pl.String).alias(c) for c in ENVELOPE if c not in raw.columns)
    raw = raw.with_row_index(ROW_ID)
    images: list[dict[str, str | None]] = []
    meta: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    for row in raw.select(ROW_ID, "op", "before", "after", "source", "ts_ms").iter_rows(named=True):
        problem = _envelope_problem(row)
        if problem:
            bad.append({ROW_ID: row[ROW_ID], "check": problem[0], "column": problem[1], "value": problem[2]})
            continue
        op = row["op"]
        image = json.loads(row["before"] if op == "d" else row["after"])
        source = json.loads(row["source"])
        values = {c: _text(image.get(c)) for c in columns} if op != "d" else {
            c: (_text(image.get(c)) if c in keys else None) for c in columns}
        images.append(values)
        meta.append({ROW_ID: row[ROW_ID], "_op": op, "_lsn": int(source["lsn"]), "_ts_ms": _commit_ms(row, source)})
    strings = pl.DataFrame(images, schema={c: pl.String for c in columns})
    meta_df = pl.DataFrame(meta, schema={ROW_ID: pl.UInt32, **EVENT})
    rejected = _rejected_frame(bad)
    if strings.height:
        upserts = meta_df.get_column("_op") != "d"
        split_up = split_valid(strings.filter(upserts), model)
        ids_up = meta_df.filter(upserts).get_column(ROW_ID)
        if split_up.rejected.height:
            found = split_up.rejected.with_columns(ids_up.gather(split_up.rejected.get_column(ROW_ID)).alias(ROW_ID))
            rejected = pl.concat([rejected, found.select(ROW_ID, "check", "column", "value", "failures", "action")])
        valid_up = _valid_rows(split_up.valid, ids_up, split_up.rejected)
        # Deletes carry only keys: those must parse.
        dtypes = model_dtypes(model)
        dels = strings.filter(~upserts).select(list(keys)).with_columns(meta_df.filter(~upserts).get_column(ROW_ID))
        typed_del = dels.with_columns(cast_text(k, dtypes[k]) for k in keys)
        broken = pl.any_horizontal(pl.col(k).is_null() for k in keys)
        for k in keys:
            bad_key = typed_del.get_column(k).is_null()
            if bad_key.any():
                rejected = pl.concat([rejected, _rejected_frame([
                    {ROW_ID: i, "check": f"dtype('{dtypes[k]}')", "column": k, "value": v}
                    for i, v in zip(dels.filter(bad_key).get_column(ROW_ID), dels.filter(bad_key).get_column(k),
                                    strict=True)])])
        valid_del = typed_del.filter(~broken)
        typed = pl.concat([valid_up, valid_del], how="diagonal_relaxed").select(ROW_ID, *columns)
    else:
        typed = pl.DataFrame(schema={ROW_ID: pl.UInt32, **model_dtypes(model)})
    rejected = rejected.unique(subset=[ROW_ID], keep="first", maintain_order=True)
    lineage = [c for c in raw.columns if c.startswith("_") and c != ROW_ID]
    events = (
        typed.join(meta_df, on=ROW_ID)
        .join(raw.select(ROW_ID, *lineage), on=ROW_ID)
        .sort(ROW_ID)
        .drop(ROW_ID)
    )
    return events, rejected.sort(ROW_ID)


def _valid_rows(valid: pl.DataFrame, ids: pl.Series, rejected: pl.DataFrame) -> pl.DataFrame:
    kept = pl.Series(ROW_ID, range(len(ids)), dtype=pl.UInt32).to_frame().join(
        rejected.select(ROW_ID), on=ROW_ID, how="anti")
    return valid.with_columns(ids.gather(kept.get_column(ROW_ID)).alias(ROW_ID))


def _envelope_problem(row: dict[str, Any]) -> tuple[str, str, str | None] | None:
    op = row["op"]
    if op not in OPS:
        return ("unknown_op", "op", op)
    image_column = "before" if op == "d" else "after"
    image = _json_object(row[image_column])
    if image is None:
        return (f"missing_{image_column}", image_column, row[image_column])
    source = _json_object(row["source"])
    lsn = source.get("lsn") if source else None
    if not isinstance(lsn, int) or isinstance(lsn, bool):
        return ("missing_lsn", "source", row["source"])
    if _commit_ms(row, source) is None:
        return ("missing_ts_ms", "source", row["source"])
    return None


def _commit_ms(row: dict[str, Any], source: dict[str, Any] | None) -> int | None:
    """The event's commit time: ``source.ts_ms``, else the envelope's ``ts_ms`` (when the connector saw it)."""
    for value in ((source or {}).get("ts_ms"), row.get("ts_ms")):
        try:
            if value is not None and not isinstance(value, bool):
                return int(value)
        except (TypeError, ValueError):
            continue
    return None


def _json_object(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _rejected_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    frame = pl.DataFrame(rows, schema={ROW_ID: pl.UInt32, "check": pl.String, "column": pl.String,
                                       "value": pl.String})
    return frame.with_columns(
        pl.struct("check", "column", "value").map_elements(lambda s: json.dumps([s]), return_dtype=pl.String)
        .alias("failures") if frame.height else pl.lit(None, pl.String).alias("failures"),
        pl.lit("quarantine").alias("action"),
    )


def chains(
    history: pl.DataFrame, events: pl.DataFrame, keys: tuple[str, ...], columns: list[str]
) -> pl.DataFrame:
    """The history rows of every key in ``events``: its chain of existing versions (``history``, rows of these keys)
    and new events, sorted by LSN (a duplicate LSN counts once), rebuilt.

    A delete closes the version before it. A delete with no version before it (it arrived before the create it
    follows) is kept as a *tombstone* row (``is_deleted``: zero length, never current, only keys), so a create that
    arrives later with a lower LSN is closed by it, and stays deleted."""
    keys_l = list(keys)
    old = history.join(events.select(keys_l).unique(), on=keys_l, how="semi")
    nulls = [pl.lit(None, history.schema[c]).alias(c) for c in columns if c not in keys_l]
    values = [c for c in columns if c not in keys_l]
    # The existing rows as the events that made them: versions, the deletes that closed some, and tombstones.
    versions_old = old.filter(~pl.col("is_deleted"))
    opened = versions_old.select(*keys_l, *values, "_lsn", pl.lit("u").alias("_op"),
                                 pl.col("valid_from").dt.epoch("ms").alias("_ts_ms"))
    closing = versions_old.filter(pl.col("_end_op") == "d").select(
        *keys_l, *nulls, pl.col("_end_lsn").alias("_lsn"), pl.lit("d").alias("_op"),
        pl.col("valid_to").dt.epoch("ms").alias("_ts_ms"))
    tombstones = old.filter(pl.col("is_deleted")).select(
        *keys_l, *nulls, "_lsn", pl.lit("d").alias("_op"), pl.col("valid_from").dt.epoch("ms").alias("_ts_ms"))
    new = events.select(*keys_l, *values, "_lsn", "_op", "_ts_ms")
    every = (
        pl.concat([opened, closing, tombstones, new], how="vertical_relaxed")
        .unique(subset=[*keys_l, "_lsn"], keep="first", maintain_order=True)
        .sort([*keys_l, "_lsn"])
        .with_columns(
            pl.col("_lsn").shift(-1).over(keys_l).alias("_end_lsn"),
            pl.col("_op").shift(-1).over(keys_l).alias("_end_op"),
            pl.col("_ts_ms").shift(-1).over(keys_l).alias("__end_ms"),
            pl.col("_op").shift(1).over(keys_l).alias("__prev_op"),
        )
    )
    is_delete = pl.col("_op") == "d"
    tombstone = is_delete & (pl.col("__prev_op").is_null() | (pl.col("__prev_op") == "d"))
    kept = every.filter(~is_delete | tombstone)
    start = pl.from_epoch("_ts_ms", time_unit="ms").dt.replace_time_zone("UTC").cast(TIMESTAMP)
    end = pl.from_epoch("__end_ms", time_unit="ms").dt.replace_time_zone("UTC").cast(TIMESTAMP)
    return kept.select(
        *keys_l, *values,
        start.alias("valid_from"),
        pl.when(is_delete).then(start).otherwise(end).alias("valid_to"),
        (pl.col("_end_lsn").is_null() & ~is_delete).alias("is_current"),
        is_delete.alias("is_deleted"),
        pl.col("_lsn").cast(pl.Int64),
        pl.when(is_delete).then(None).otherwise(pl.col("_end_lsn")).cast(pl.Int64).alias("_end_lsn"),
        pl.when(is_delete).then(None).otherwise(pl.col("_end_op")).alias("_end_op"),
        pl.when(pl.col("_lsn") == SNAPSHOT_LSN).then(None).otherwise(pl.col("_ts_ms")).cast(pl.Int64).alias("_ts_ms"),
        pl.when(is_delete).then(None).otherwise(pl.col("__end_ms")).cast(pl.Int64).alias("_end_ts_ms"),
    )


def current(versions: pl.DataFrame, touched: pl.DataFrame, keys: tuple[str, ...]) -> pl.DataFrame:
    """The current state of every ``touched`` key: its current version's columns with ``__delete`` false, or only its
    keys with ``__delete`` true when its chain ends with a delete."""
    keys_l = list(keys)
    live = versions.filter(pl.col("is_current")).drop("valid_from", "valid_to", "is_current", "is_deleted", "_end_lsn",
                                                       "_end_op")
    gone = touched.select(keys_l).unique().join(live.select(keys_l), on=keys_l, how="anti")
    return pl.concat([live.with_columns(pl.lit(False).alias("__delete")),
                      gone.with_columns(pl.lit(True).alias("__delete"))], how="diagonal_relaxed")


# --- the stage: bronze change events -> silver history (SCD2) -> silver current state (SCD1) -----------------------


def app_id(name: str) -> str:
    return silver.cdc_app_id(name)


def current_app_id(name: str) -> str:
    """Recorded on the history table when applying a batch left the current state as it was (no commit to it, so
    tables built from it do not see a change)."""
    return f"{silver.cdc_app_id(name)}.current"


def history_schema(spec: Any) -> pa.Schema:
    """The history table: the model's columns, lineage of the event that opened the version, then validity."""
    base = silver.arrow_schema(spec)
    fields = [f for f in base if f.name not in ("_run_id",)]
    fields += [pa.field("valid_from", pa.timestamp("us", tz="UTC")), pa.field("valid_to", pa.timestamp("us", tz="UTC")),
               pa.field("is_current", pa.bool_()), pa.field("is_deleted", pa.bool_()), pa.field("_lsn", pa.int64()),
               pa.field("_end_lsn", pa.int64()), pa.field("_end_op", pa.string()),
               # the commit times of the events that opened and closed the version, in ms (for the lag)
               pa.field("_ts_ms", pa.int64()), pa.field("_end_ts_ms", pa.int64())]
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
        parsed = engine.collect(engine.run_tasks([{"path": f.path} for f in new_files], _parse_file,
                                                 fn_kwargs={**common, "source": cdc.source}))
        events = [DataFile.from_json(m["file"]) for m in parsed if m["kind"] == "events"]
        rejected = [DataFile.from_json(m["file"]) for m in parsed if m["kind"] == "quarantine"]
        result.files_in = len(new_files)
        result.rows_in = sum(m["n"] for m in parsed if m["kind"] == "read")
        result.rows_quarantined = sum(f.rows for f in rejected)
        info = {"run_id": ctx.run_id, "stage": "cdc", "inputs": result.inputs}
        quarantine.commit(storage, cdc.source, rejected, stage="silver", replace=ctx.full_refresh, metadata=info)
        event_items = [{"path": f.path, "partition_values": {}} for f in events]
        marks: dict[str, int] = {}  # watermarks still to record on the history (nothing changed to carry them)
        if not done_history:
            history, changed = _commit_history(ctx, cdc, spec, history, target, event_items, staging, info,
                                               source.version, seed=rebuild or not history.exists)
            if not changed:
                marks[app] = source.version
        if not done_current:
            item = {"events": event_items, "history": [merge.ranged_item(f, spec.keys[0]) for f in history.files]}
            kwargs = {**common, "history_rel": history.ref.rel, "target_schema": target.schema}
            staged = engine.collect(engine.run_tasks([item], _current_rows, fn_kwargs=kwargs))
            merged = merge.merge(
                storage, target, [DataFile.from_json(m["file"]) for m in staged if m["kind"] == "current"], staging,
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
) -> tuple[table.Snapshot, bool]:
    """Rebuild the chains of the keys the events touch, in one commit; with ``seed`` (the first time, or after the
    snapshot stage rewrote the table) the table's rows are the first version of every key and every event is
    applied again. Returns the history and whether it changed (no commit when it did not: the caller records the
    watermark)."""
    storage = ctx.storage
    key = spec.keys[0]
    item = {"events": events, "history": [] if seed else [merge.ranged_item(f, key) for f in history.files],
            "seed": [f.item() for f in target.files] if seed else []}
    kwargs = {"storage": storage, "spec": spec, "history_rel": silver.ref(cdc.history).rel, "staging": staging,
              "run_id": ctx.run_id, "max_rows": ctx.settings.target_file_rows}
    out = engine.collect(engine.run_tasks([item], _rebuild_history, fn_kwargs=kwargs))
    removed = {m["path"] for m in out if m["kind"] == "remove"}
    adds = [DataFile.from_json(m["file"]) for m in out if m["kind"] == "add"]
    removes = list(history.files) if seed else [f for f in history.files if f.path in removed]
    if not adds and not removes and history.exists:
        return history, False  # every touched chain is as it was (redelivered or already applied events)
    table.commit(storage, history, schema=history_schema(spec), adds=adds, removes=removes,
                 app_transactions={app_id(cdc.name): version}, metadata=info)
    return table.snapshot(storage, history.ref), True


# --- worker side -------------------------------------------------------------------------------------------------


def _parse_file(
    item: dict[str, Any], *, storage: Storage, spec: Silver, staging: str, run_id: str, source: str
) -> pa.Table:
    raw = read_files(storage, bronze.ref(source).rel, [{"path": item["path"], "partition_values": {}}])
    out: list[dict[str, Any]] = [{"kind": "read", "file": "", "n": raw.height}]
    events, rejected = parse_events(raw, spec.model, tuple(spec.keys))
    failing = rejected.filter(pl.col("action") == "fail")
    if failing.height:  # a model rule whose action is fail: the run stops, naming the event
        raise silver.row_failure(str(silver.ref(spec.name)), raw, failing)
    if rejected.height:  # the envelope as landed, with the reason
        q = silver.rejected_records(raw, rejected, run_id)
        qfile = quarantine.write(storage, source, q, stage="silver", source_file=q.column("_source_file")[0].as_py(),
                                 run_id=run_id)
        out.append({"kind": "quarantine", "file": qfile.to_json(), "n": qfile.rows})
    if events.height:
        f = write_data_file(storage, staging, events.to_arrow(), prefix="events")
        out.append({"kind": "events", "file": f.to_json(), "n": f.rows})
    return pa.Table.from_pylist(out, schema=_META)


def _columns(spec: Silver) -> list[str]:
    return [*model_dtypes(spec.model), "_source_file", "_source_line", "_ingested_at"]


def _rebuild_history(
    item: dict[str, Any], *, storage: Storage, spec: Silver, history_rel: str, staging: str, run_id: str,
    max_rows: int,
) -> pa.Table:
    """Rebuild the chains of the keys the events touch. Files are read one at a time (those whose key range may hold
    a touched key), so memory is one file plus the touched keys' versions, however large the history. The files
    holding a touched key are rewritten without it, and the rebuilt chains go with the last of them (else in a new
    file), so no file is left holding part of a rebuilt chain."""
    keys = list(spec.keys)
    columns = _columns(spec)
    schema = history_schema(spec)
    events = read_files(storage, staging, item["events"]) if item["events"] else pl.DataFrame()
    touched = events.select(keys).unique() if events.height else pl.DataFrame(schema=_polars(schema)).select(keys)
    out: list[dict[str, Any]] = []

    def written(df: pl.DataFrame) -> list[dict[str, Any]]:
        files = write_frame(storage, history_rel, df.select(schema.names), schema, prefix=f"part-{run_id}",
                            max_rows=max_rows) if df.height else []
        return [{"kind": "add", "file": f.to_json()} for f in files]

    if item["seed"]:
        # every row of the table is the first version of its key, valid since before the events began (the
        # snapshot's own time is unknown: not when we ingested it)
        old = []
        for f in item["seed"]:
            rows = read_files(storage, silver.ref(spec.name).rel, [f]).select(columns).with_columns(
                pl.lit(None, TIMESTAMP).alias("valid_from"), pl.lit(None, TIMESTAMP).alias("valid_to"),
                pl.lit(True).alias("is_current"), pl.lit(False).alias("is_deleted"),
                pl.lit(SNAPSHOT_LSN, pl.Int64).alias("_lsn"), pl.lit(None, pl.Int64).alias("_end_lsn"),
                pl.lit(None, pl.String).alias("_end_op"), pl.lit(None, pl.Int64).alias("_ts_ms"),
                pl.lit(None, pl.Int64).alias("_end_ts_ms"),
            )
            old.append(rows.join(touched, on=keys, how="semi"))
            out += written(rows.join(touched, on=keys, how="anti"))
        if events.height:
            existing = pl.concat(old, how="vertical_relaxed") if old else pl.DataFrame(schema=_polars(schema))
            out += written(_versions(existing, events, spec, columns))
        return pa.Table.from_pylist(out, schema=_HISTORY_META)
    if not events.height:
        return pa.Table.from_pylist([], schema=_HISTORY_META)
    first = touched.get_column(keys[0])
    hits: list[pl.DataFrame] = []
    hit_files: list[dict[str, Any]] = []
    for f in item["history"]:
        if not merge.may_hold(f, first):
            continue
        hit = read_files(storage, history_rel, [f]).join(touched, on=keys, how="semi")
        if hit.height:
            hits.append(hit)
            hit_files.append(f)
    existing = pl.concat(hits, how="vertical_relaxed") if hits else pl.DataFrame(schema=_polars(schema))
    versions = _versions(existing, events, spec, columns)
    if existing.select(schema.names).sort([*keys, "_lsn"]).equals(versions.select(schema.names).sort([*keys, "_lsn"])):
        return pa.Table.from_pylist([], schema=_HISTORY_META)  # every touched chain is as it was
    for i, f in enumerate(hit_files):
        out.append({"kind": "remove", "path": f["path"]})
        kept = read_files(storage, history_rel, [f]).join(touched, on=keys, how="anti")
        if i + 1 < len(hit_files):
            out += written(kept)
        else:  # the rebuilt chains go with the last rewritten file: no extra small file
            versions = pl.concat([kept.select(schema.names), versions.select(schema.names)], how="vertical_relaxed")
    out += written(versions)
    return pa.Table.from_pylist(out, schema=_HISTORY_META)


def _versions(existing: pl.DataFrame, events: pl.DataFrame, spec: Silver, columns: list[str]) -> pl.DataFrame:
    events = events.with_columns(pl.col("_ingested_at").cast(TIMESTAMP))
    return chains(existing, events.select(*columns, *EVENT), tuple(spec.keys), columns)


def _current_rows(
    item: dict[str, Any], *, storage: Storage, spec: Silver, staging: str, run_id: str, history_rel: str,
    target_schema: pa.Schema,
) -> pa.Table:
    """The current state of the keys the events touch, read back from the committed history, one file at a time (those
    whose key range may hold a touched key)."""
    keys = list(spec.keys)
    if not item["events"]:
        return pa.Table.from_pylist([], schema=_META)
    touched = read_files(storage, staging, item["events"], columns=keys).unique()
    first = touched.get_column(keys[0])
    found = [read_files(storage, history_rel, [f]).join(touched, on=keys, how="semi")
             for f in item["history"] if merge.may_hold(f, first)]
    history = history_schema(spec)
    versions = pl.concat(found, how="vertical_relaxed") if found else pl.DataFrame(schema=_polars(history))
    rows = current(versions, touched, tuple(spec.keys))
    full = pa.schema([*target_schema, pa.field("__delete", pa.bool_())])
    rows = rows.with_columns(pl.lit(None).alias(n) for n in full.names if n not in rows.columns)
    f = write_data_file(storage, staging, to_arrow(rows.select(full.names), full), prefix="current")
    return pa.Table.from_pylist([{"kind": "current", "file": f.to_json(), "n": f.rows}], schema=_META)


def _polars(schema: pa.Schema) -> dict[str, Any]:
    return dict(pl.from_arrow(schema.empty_table()).schema)  # type: ignore[union-attr]


_META = pa.schema([("kind", pa.string()), ("file", pa.string()), ("n", pa.int64())])
_HISTORY_META = pa.schema([("kind", pa.string()), ("path", pa.string()), ("file", pa.string())])

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

from lakehouse.quality.validation import ROW_ID, cast_text, model_dtypes, split_valid

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

"""Change data capture from Debezium change events: reading events, and the per-key version chains that give both
the current state (SCD type 1) and the history (SCD type 2).

An event is one bronze ``event`` (the JSON text of a landed line), in any form :mod:`.debezium` reads: ``op`` (``c``
create, ``u`` update, ``d`` delete, ``r`` snapshot read, ``t`` truncate; ``m``, a logical message, is no row change),
the row image (the after-image, or a delete's before-image, which needs only the keys), the log position ``lsn`` and
the commit time ``ts_ms``. A tombstone (a ``null`` line after a delete) carries nothing: bronze skips a bare one, this
stage a wrapped one.

Applying events "one by one in LSN order, ignoring an event older than the row's last applied LSN" leaves each key in
the state of its highest-LSN event (its after-image, or absent after a delete). So the state does not depend on the
order files arrive in, duplicates (same key and LSN) are harmless, and a late event changes the history but not the
current state unless it is the newest. The history of a key is its chain of events sorted by LSN: each create, update
or read opens a version (``valid_from`` = its commit time) that the next event of the key closes (``valid_to``), and a
delete only closes (dbt's ``hard_deletes = 'invalidate'``). A truncate closes every key's version open at its LSN
(``_end_op`` ``t``). Rows of the table before any event (its snapshot) are the first version, at LSN -1. A column
whose value the event did not carry (an unchanged TOASTed value, the connector's placeholder) takes the value of the
version before; the version records it in ``_unavailable`` so a late event between them is still followed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import polars as pl

from lakehouse.cdc import debezium
from lakehouse.cdc.debezium import UNAVAILABLE, Malformed, Options
from lakehouse.quality.validation import ROW_ID, cast_text, model_dtypes, split_valid

SNAPSHOT_LSN = -1
# History columns after the model's: validity, whether current, and the events that opened and closed the version.
TIMESTAMP = pl.Datetime("us", "UTC")
EVENT = {"_op": pl.String, "_lsn": pl.Int64, "_ts_ms": pl.Int64, "_unavailable": pl.String}
CLOSING = ("d", "t")  # the operations that close a version: a delete, a truncate


@dataclass(frozen=True)
class Parse:
    """Events read from a bronze batch: ``events`` (the model's columns, ``_op``, ``_lsn``, ``_ts_ms``,
    ``_unavailable`` and the lineage columns), ``rejected`` (``ROW_ID``, ``check``, ``column``, ``value``,
    ``failures``, ``action``, like a validation split) and ``skipped``: the events that change no row (logical
    messages, wrapped tombstones), counted."""

    events: pl.DataFrame
    rejected: pl.DataFrame
    skipped: int = 0


def parse_events(
    raw: pl.DataFrame, model: Any, keys: tuple[str, ...], options: Options | None = None, truncate: str = "apply",
) -> Parse:
    """Typed change events from bronze rows (column ``event``), and the rejected ones.

    A row is rejected for JSON that is not an event, an unknown ``op``, a missing row image (``after`` for c/u/r,
    ``before`` with the keys for d), no integer LSN or commit time, a value that cannot be decoded, an image that
    fails the model, or a truncate when ``truncate`` is ``quarantine`` (``fail``: its action is fail). A truncate
    event has no keys. The reason names the field and the form read."""
    options = options or Options()
    dtypes = model_dtypes(model)
    columns = list(dtypes)
    raw = raw.with_row_index(ROW_ID)
    images: list[dict[str, str | None]] = []
    meta: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    skipped = 0
    for row_id, text in raw.select(ROW_ID, "event").iter_rows():
        try:
            event = debezium.read(text)
            if event is None or event.op == "m":
                skipped += 1
                continue
            values, unavailable = _image(event, dtypes, keys, options)
        except Malformed as m:
            bad.append({ROW_ID: row_id, "check": m.check, "column": m.column, "value": m.value, "reason": m.reason})
            continue
        if event.op == "t" and truncate != "apply":
            bad.append({ROW_ID: row_id, "check": "truncate", "column": "op", "value": "t",
                        "reason": f"{event.form}: a truncate (Cdc truncate={truncate!r})",
                        "action": "fail" if truncate == "fail" else "quarantine"})
            continue
        images.append(values)
        meta.append({ROW_ID: row_id, "_op": event.op, "_lsn": event.lsn, "_ts_ms": event.ts_ms,
                     "_unavailable": json.dumps(unavailable) if unavailable else None})
    strings = pl.DataFrame(images, schema={c: pl.String for c in columns})
    meta_df = pl.DataFrame(meta, schema={ROW_ID: pl.UInt32, **EVENT})
    rejected = _rejected_frame(bad)
    ops = meta_df.get_column("_op")
    upserts, deletes = ~ops.is_in(CLOSING), ops == "d"
    # Upserts: the model's rules, except on a column the event did not carry (it takes the previous value).
    ids_up = meta_df.filter(upserts).get_column(ROW_ID)
    exempt = meta_df.filter(upserts).with_row_index(ROW_ID + "up").filter(pl.col("_unavailable").is_not_null())
    exempt = exempt.select(pl.col(ROW_ID + "up").alias(ROW_ID), pl.col("_unavailable").str.json_decode(
        pl.List(pl.String)).alias("column")).explode("column")
    split_up = split_valid(strings.filter(upserts), model, exempt=exempt)
    if split_up.rejected.height:
        found = split_up.rejected.with_columns(ids_up.gather(split_up.rejected.get_column(ROW_ID)).alias(ROW_ID))
        rejected = pl.concat([rejected, _hinted(found.select(rejected.columns), dtypes, options)])
    valid_up = _valid_rows(split_up.valid, ids_up, split_up.rejected)
    # Deletes carry only keys: those must parse.
    dels = strings.filter(deletes).select(list(keys)).with_columns(meta_df.filter(deletes).get_column(ROW_ID))
    typed_del = dels.with_columns(cast_text(k, dtypes[k]) for k in keys)
    for k in keys:
        bad_key = typed_del.get_column(k).is_null()
        if bad_key.any():
            rejected = pl.concat([rejected, _rejected_frame([
                {ROW_ID: i, "check": f"dtype('{dtypes[k]}')", "column": k, "value": v}
                for i, v in zip(dels.filter(bad_key).get_column(ROW_ID), dels.filter(bad_key).get_column(k),
                                strict=True)])])
    valid_del = typed_del.filter(~pl.any_horizontal(pl.col(k).is_null() for k in keys))
    truncates = meta_df.filter(ops == "t").select(ROW_ID)
    typed = pl.concat([valid_up, valid_del, truncates], how="diagonal_relaxed").select(ROW_ID, *columns)
    typed = typed.with_columns(pl.col(c).cast(t) for c, t in dtypes.items())
    rejected = rejected.unique(subset=[ROW_ID], keep="first", maintain_order=True)
    lineage = [c for c in raw.columns if c.startswith("_") and c != ROW_ID]
    events = (
        typed.join(meta_df, on=ROW_ID)
        .join(raw.select(ROW_ID, *lineage), on=ROW_ID)
        .sort(ROW_ID)
        .drop(ROW_ID)
    )
    return Parse(events, rejected.sort(ROW_ID), skipped)


def _image(event: debezium.Event, dtypes: dict[str, pl.DataType], keys: tuple[str, ...],
           options: Options) -> tuple[dict[str, str | None], list[str]]:
    """The event's row image as text per model column (a delete's keys only; a truncate's nothing), and the
    columns the event did not carry."""
    values: dict[str, str | None] = dict.fromkeys(dtypes)
    unavailable: list[str] = []
    if event.image is None:  # a truncate
        return values, unavailable
    for column in (keys if event.op == "d" else dtypes):
        given = event.image.get(column)
        if event.op == "d" and given is None:
            raise Malformed("missing_key", column, json.dumps(event.image),
                            f"{event.form}: the delete's before-image has no key {column!r}")
        value = debezium.decode(given, column, dtypes[column], (event.fields or {}).get(column), options, event.form)
        if value is UNAVAILABLE:
            if column in keys:
                raise Malformed("undecodable", column, given, f"{event.form}: key {column!r} is unavailable")
            unavailable.append(column)
            value = None
        values[column] = value  # type: ignore[assignment]
    return values, unavailable


def _hinted(rejected: pl.DataFrame, dtypes: dict[str, pl.DataType], options: Options) -> pl.DataFrame:
    """Rejections with a hint where the value says what the settings missed (base64: a precise decimal)."""
    failures = []
    for check, column, value, text in rejected.select("check", "column", "value", "failures").iter_rows():
        why = debezium.hint(check, column, value, dtypes[column], options) if column in dtypes else None
        failures.append(text if why is None else json.dumps([{**json.loads(text)[0], "reason": why},
                                                              *json.loads(text)[1:]]))
    return rejected.with_columns(pl.Series("failures", failures, dtype=pl.String))


def _valid_rows(valid: pl.DataFrame, ids: pl.Series, rejected: pl.DataFrame) -> pl.DataFrame:
    kept = pl.Series(ROW_ID, range(len(ids)), dtype=pl.UInt32).to_frame().join(
        rejected.select(ROW_ID), on=ROW_ID, how="anti")
    return valid.with_columns(ids.gather(kept.get_column(ROW_ID)).alias(ROW_ID))


def _rejected_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    failures = [json.dumps([{k: r.get(k) for k in ("check", "column", "value", "reason") if r.get(k) is not None}])
                for r in rows]
    return pl.DataFrame(
        {ROW_ID: [r[ROW_ID] for r in rows], "check": [r["check"] for r in rows],
         "column": [r["column"] for r in rows], "value": [r["value"] for r in rows], "failures": failures,
         "action": [r.get("action", "quarantine") for r in rows]},
        schema={ROW_ID: pl.UInt32, "check": pl.String, "column": pl.String, "value": pl.String,
                "failures": pl.String, "action": pl.String},
    )


def chains(
    history: pl.DataFrame, events: pl.DataFrame, keys: tuple[str, ...], columns: list[str],
    truncates: pl.DataFrame | None = None, *, all_keys: bool = False,
) -> pl.DataFrame:
    """The history rows of every key in ``events``: its chain of existing versions (``history``, rows of these keys)
    and new events, sorted by LSN (a duplicate LSN counts once), rebuilt. ``truncates`` (``_lsn``, ``_ts_ms``) close
    the version each of these keys has open at their LSN; with ``all_keys`` every key of ``history`` is rebuilt
    (a batch with a truncate reaches them all).

    A delete closes the version before it. A delete with no version before it (it arrived before the create it
    follows) is kept as a *tombstone* row (``is_deleted``: zero length, never current, only keys), so a create that
    arrives later with a lower LSN is closed by it, and stays deleted. A truncate with no version open is nothing."""
    keys_l = list(keys)
    old = history if all_keys else history.join(events.select(keys_l).unique(), on=keys_l, how="semi")
    nulls = [pl.lit(None, history.schema[c]).alias(c) for c in columns if c not in keys_l]
    values = [c for c in columns if c not in keys_l]
    none = pl.lit(None, pl.String).alias("_unavailable")
    # The existing rows as the events that made them: versions, the deletes that closed some, and tombstones.
    versions_old = old.filter(~pl.col("is_deleted"))
    opened = versions_old.select(*keys_l, *values, "_lsn", pl.col("_op").fill_null("u").alias("_op"),
                                 pl.col("valid_from").dt.epoch("ms").alias("_ts_ms"), "_unavailable")
    closing = versions_old.filter(pl.col("_end_op").is_in(CLOSING)).select(
        *keys_l, *nulls, pl.col("_end_lsn").alias("_lsn"), pl.col("_end_op").alias("_op"),
        pl.col("valid_to").dt.epoch("ms").alias("_ts_ms"), none)
    tombstones = old.filter(pl.col("is_deleted")).select(
        *keys_l, *nulls, "_lsn", pl.lit("d").alias("_op"), pl.col("valid_from").dt.epoch("ms").alias("_ts_ms"), none)
    new = events.filter(pl.col("_op") != "t").select(*keys_l, *values, "_lsn", "_op", "_ts_ms", "_unavailable")
    parts = [opened, closing, tombstones, new]
    if truncates is not None and truncates.height:
        every_key = pl.concat([old.select(keys_l), new.select(keys_l)], how="vertical_relaxed").unique()
        parts.append(every_key.join(truncates.select("_lsn", "_ts_ms").unique(), how="cross").select(
            *keys_l, *nulls, "_lsn", pl.lit("t").alias("_op"), "_ts_ms", none))
    every = (
        pl.concat(parts, how="vertical_relaxed")
        .unique(subset=[*keys_l, "_lsn"], keep="first", maintain_order=True)
        .sort([*keys_l, "_lsn"])
    )
    # A truncate closes only an open version: one after nothing, a delete or another truncate is no event.
    prev = pl.col("_op").shift(1).over(keys_l)
    every = every.filter(~((pl.col("_op") == "t") & (prev.is_null() | prev.is_in(CLOSING))))
    every = _fill_unavailable(every, keys_l, values).with_columns(
        pl.col("_lsn").shift(-1).over(keys_l).alias("_end_lsn"),
        pl.col("_op").shift(-1).over(keys_l).alias("_end_op"),
        pl.col("_ts_ms").shift(-1).over(keys_l).alias("__end_ms"),
        pl.col("_op").shift(1).over(keys_l).alias("__prev_op"),
    )
    is_delete = pl.col("_op").is_in(CLOSING)
    tombstone = (pl.col("_op") == "d") & (pl.col("__prev_op").is_null() | pl.col("__prev_op").is_in(CLOSING))
    kept = every.filter(~is_delete | tombstone)
    start = pl.from_epoch("_ts_ms", time_unit="ms").dt.replace_time_zone("UTC").cast(TIMESTAMP)
    end = pl.from_epoch("__end_ms", time_unit="ms").dt.replace_time_zone("UTC").cast(TIMESTAMP)
    return kept.select(
        *keys_l, *values,
        start.alias("valid_from"),
        pl.when(is_delete).then(start).otherwise(end).alias("valid_to"),
        (pl.col("_end_lsn").is_null() & ~is_delete).alias("is_current"),
        is_delete.alias("is_deleted"),
        pl.when(pl.col("_lsn") == SNAPSHOT_LSN).then(None).otherwise(pl.col("_op")).alias("_op"),
        pl.col("_lsn").cast(pl.Int64),
        pl.when(is_delete).then(None).otherwise(pl.col("_end_lsn")).cast(pl.Int64).alias("_end_lsn"),
        pl.when(is_delete).then(None).otherwise(pl.col("_end_op")).alias("_end_op"),
        pl.when(pl.col("_lsn") == SNAPSHOT_LSN).then(None).otherwise(pl.col("_ts_ms")).cast(pl.Int64).alias("_ts_ms"),
        pl.when(is_delete).then(None).otherwise(pl.col("__end_ms")).cast(pl.Int64).alias("_end_ts_ms"),
        "_unavailable",
    )


def _fill_unavailable(every: pl.DataFrame, keys: list[str], values: list[str]) -> pl.DataFrame:
    """Each value a version did not carry (listed in its ``_unavailable``) from the version before it in the key's
    chain (after a delete or truncate: none); ``every`` is sorted by key and LSN."""
    if every.get_column("_unavailable").is_null().all():
        return every
    fills = []
    for c in values:
        missing = pl.col("_unavailable").str.contains(json.dumps(c), literal=True).fill_null(False)
        run = (~missing).cast(pl.Int32).cum_sum().over(keys)  # a run: a carried value, then the versions lacking it
        fills.append(pl.col(c).first().over([*keys, run]).alias(c))
    return every.with_columns(fills)


def current(versions: pl.DataFrame, touched: pl.DataFrame, keys: tuple[str, ...]) -> pl.DataFrame:
    """The current state of every ``touched`` key: its current version's columns with ``__delete`` false, or only its
    keys with ``__delete`` true when its chain ends with a delete."""
    keys_l = list(keys)
    live = versions.filter(pl.col("is_current")).drop("valid_from", "valid_to", "is_current", "is_deleted", "_end_lsn",
                                                       "_end_op")
    gone = touched.select(keys_l).unique().join(live.select(keys_l), on=keys_l, how="anti")
    return pl.concat([live.with_columns(pl.lit(False).alias("__delete")),
                      gone.with_columns(pl.lit(True).alias("__delete"))], how="diagonal_relaxed")

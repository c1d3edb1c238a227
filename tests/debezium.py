"""A Debezium PostgreSQL connector's change feed of one table, as Kafka Connect sinks land it, in each converter
configuration, following Debezium's documented formats (the PostgreSQL connector and event-flattening pages):

- ``wrapped/precise``: JsonConverter with ``schemas.enable=true`` (``{"schema", "payload"}``), the default
  ``decimal.handling.mode=precise`` (NUMERIC(12,2) as base64 of the unscaled integer with ``scale`` in the schema,
  NUMERIC without a scale as ``VariableScaleDecimal`` ``{scale, value}``), a ``transaction`` block, ``ts_us``/``ts_ns``;
  a tombstone is ``{"schema": null, "payload": null}``.
- ``wrapped/string``: the same with ``decimal.handling.mode=string``.
- ``plain/double``: ``schemas.enable=false`` and ``decimal.handling.mode=double`` (JSON numbers), an older
  connector's boolean ``source.snapshot``; a tombstone is ``null``.
- ``flattened``: the ExtractNewRecordState transform with ``add.fields=op,lsn,source.ts_ms`` and
  ``delete.tombstone.handling.mode=rewrite`` (``__deleted: "true"``), ``schemas.enable=false``, decimals as strings.

Temporal types are ``time.precision.mode=adaptive``'s: DATE as ``io.debezium.time.Date`` (days), TIMESTAMP(6) as
``MicroTimestamp`` (PostgreSQL's ``infinity`` as the documented sentinel), TIMESTAMPTZ as ``ZonedTimestamp``. The
table has ``REPLICA IDENTITY DEFAULT`` (an update's and a delete's before-image hold only the key) and a TOASTed
``notes`` column that an update leaving it unchanged sends as ``__debezium_unavailable_value``.

:func:`feed` makes the changes (snapshot reads, creates, updates, deletes, key changes, a truncate, a logical
message), :func:`render` one change as a configuration writes it, :func:`replay` applies changes one by one in LSN
order (the oracle).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import random
from dataclasses import dataclass, field
from typing import Annotated, Any

import pandera.polars as pa
import polars as pl

from lakehouse import Cdc, Pipeline, Silver, Source

CONFIGS = ("wrapped/precise", "wrapped/string", "plain/double", "flattened")
PLACEHOLDER = "__debezium_unavailable_value"
POS_INFINITY = 9223372036825200000  # TIMESTAMP 'infinity' as the connector sends it
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
COLUMNS = ("id", "owner", "balance", "rate", "opened", "last_login", "updated_at", "notes")


class Account(pa.DataFrameModel):
    """``accounts``: id BIGINT PRIMARY KEY, owner TEXT, balance NUMERIC(12,2), rate NUMERIC, opened DATE,
    last_login TIMESTAMP(6), updated_at TIMESTAMPTZ, notes TEXT (TOASTed)."""

    id: pl.Int64
    owner: pl.String
    balance: Annotated[pl.Decimal, 12, 2]
    rate: pl.Float64 = pa.Field(nullable=True)
    opened: pl.Date
    last_login: Annotated[pl.Datetime, "us", None] = pa.Field(nullable=True)
    updated_at: Annotated[pl.Datetime, "us", "UTC"]
    notes: pl.String = pa.Field(nullable=True)


def pipeline(**cdc: Any) -> Pipeline:
    """``accounts`` from its export (``raw/accounts/``), its change feed (``raw/accounts_cdc/``) applied with the
    Cdc settings ``cdc``."""
    return Pipeline("bank", sources=[Source("accounts", format="csv"), Source("accounts_cdc", format="ndjson")],
                    silver=[Silver("accounts", Account, keys="id")],
                    cdc=[Cdc("accounts", source="accounts_cdc", **cdc)])


PIPELINE = pipeline()
FAIL_ON_TRUNCATE = pipeline(truncate="fail")
QUARANTINE_TRUNCATE = pipeline(truncate="quarantine")


@dataclass
class Change:
    """One change at the source: ``op`` (c, u, d, r, t, m), the row after it (``row``; a delete's and a truncate's
    is None), the key it is about, its LSN and commit time, and the columns the connector did not send."""

    op: str
    key: int | None
    row: dict[str, Any] | None
    lsn: int
    ts_ms: int
    unavailable: tuple[str, ...] = ()
    snapshot: str = "false"
    txid: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _row(rng: random.Random, key: int, ts_ms: int) -> dict[str, Any]:
    cents = rng.randint(-99_999_99, 9_999_999_99)
    return {
        "id": key, "owner": f"owner-{key}-{rng.randint(0, 99)}", "balance": decimal.Decimal(cents).scaleb(-2),
        "rate": rng.choice([None, decimal.Decimal("0.0525"), decimal.Decimal("1.5"), decimal.Decimal("-0.000125")]),
        "opened": dt.date(2020, 1, 1) + dt.timedelta(days=rng.randint(0, 2000)),
        "last_login": rng.choice([None, "infinity", EPOCH + dt.timedelta(microseconds=ts_ms * 1000 + 123)]),
        "updated_at": EPOCH + dt.timedelta(milliseconds=ts_ms, microseconds=456),
        "notes": "long note " * rng.randint(1, 4) + str(key),
    }


def initial(rows: int, seed: int = 0) -> dict[int, dict[str, Any]]:
    """The table before the connector started (the silver snapshot's rows)."""
    rng = random.Random(seed)
    return {k: _row(rng, k, 1_700_000_000_000) for k in range(1, rows + 1)}


def feed(start: dict[int, dict[str, Any]], changes: int, seed: int = 0, *, truncate_at: float | None = 0.6,
         toast: float = 0.3) -> list[Change]:
    """The connector's changes in LSN order: a snapshot (``r``, one LSN, ``first``..``last``) of ``start``, then
    creates, updates (``toast``: share of them leaving ``notes`` unsent), deletes, primary-key changes (a delete of
    the old key and a create of the new), a logical message, and (at ``truncate_at`` of the way) a truncate."""
    rng = random.Random(seed)
    state = {k: dict(v) for k, v in start.items()}
    lsn, ts = 50_000_000, 1_700_000_100_000
    out: list[Change] = []
    keys = sorted(state)
    for i, k in enumerate(keys):  # the initial snapshot: every row at the snapshot's LSN
        mark = "first" if i == 0 else "last" if i == len(keys) - 1 else "true"
        out.append(Change("r", k, dict(state[k]), lsn, ts, snapshot=mark))
    next_key = max(keys, default=0) + 1
    truncate_index = int(changes * truncate_at) if truncate_at is not None else -1
    message_index = changes // 3
    for i in range(changes):
        lsn += rng.randint(8, 400)
        ts += rng.randint(1, 3_000)
        txid = 700 + i
        if i == truncate_index:
            out.append(Change("t", None, None, lsn, ts, txid=txid))
            state.clear()
            continue
        if i == message_index:
            out.append(Change("m", None, None, lsn, ts, txid=txid, extra={"prefix": "audit", "content": "Ymfy"}))
            continue
        roll = rng.random()
        live = sorted(state)
        if roll < 0.2 or not live:
            key, next_key = next_key, next_key + 1
            state[key] = _row(rng, key, ts)
            out.append(Change("c", key, dict(state[key]), lsn, ts, txid=txid))
        elif roll < 0.3:
            key = rng.choice(live)
            del state[key]
            out.append(Change("d", key, None, lsn, ts, txid=txid))
        elif roll < 0.35:  # UPDATE ... SET id = new: a delete of the old key, then a create of the new one
            key = rng.choice(live)
            row = state.pop(key)
            new, next_key = next_key, next_key + 1
            state[new] = {**row, "id": new}
            out.append(Change("d", key, None, lsn, ts, txid=txid))
            lsn += 1
            out.append(Change("c", new, dict(state[new]), lsn, ts, txid=txid))
        else:
            key = rng.choice(live)
            row = state[key]
            column = rng.choice(["balance", "owner", "last_login", "notes", "rate"])
            fresh = _row(rng, key, ts)
            row.update({column: fresh[column], "updated_at": fresh["updated_at"]})
            unsent = ("notes",) if column != "notes" and rng.random() < toast else ()
            out.append(Change("u", key, dict(row), lsn, ts, unavailable=unsent, txid=txid))
    return out


def replay(start: dict[int, dict[str, Any]], changes: list[Change]) -> dict[int, dict[str, Any]]:
    """The oracle: the table after applying ``changes`` one by one in LSN order (a duplicate LSN counts once, a
    value the connector did not send keeps the one before)."""
    state = {k: dict(v) for k, v in start.items()}
    seen: set[tuple[int | None, int]] = set()
    for c in sorted(changes, key=lambda c: c.lsn):
        if (c.key, c.lsn) in seen:
            continue
        seen.add((c.key, c.lsn))
        if c.op == "t":
            state.clear()
        elif c.op == "d":
            state.pop(c.key, None)  # type: ignore[arg-type]
        elif c.op in ("c", "u", "r"):
            assert c.row is not None and c.key is not None
            kept = {col: state.get(c.key, {}).get(col) for col in c.unavailable}
            state[c.key] = {**c.row, **kept}
    return state


def expected_frame(state: dict[int, dict[str, Any]]) -> pl.DataFrame:
    """The oracle's table as the silver table types it."""
    rows = [{**r, "rate": None if r["rate"] is None else float(r["rate"]),
             "last_login": dt.datetime(9999, 12, 31, 23, 59, 59, 999999) if r["last_login"] == "infinity"
             else None if r["last_login"] is None else r["last_login"].replace(tzinfo=None)}
            for r in state.values()]
    schema = {"id": pl.Int64, "owner": pl.String, "balance": pl.Decimal(12, 2), "rate": pl.Float64,
              "opened": pl.Date, "last_login": pl.Datetime("us"), "updated_at": pl.Datetime("us", "UTC"),
              "notes": pl.String}
    return pl.DataFrame(rows, schema=schema, orient="row").sort("id") if rows else pl.DataFrame(schema=schema)


def snapshot_csv(start: dict[int, dict[str, Any]]) -> str:
    """The table's rows as an export lands them (the silver snapshot source)."""
    lines = [",".join(COLUMNS)]
    for r in start.values():
        values = [r["id"], r["owner"], r["balance"], "" if r["rate"] is None else r["rate"], r["opened"].isoformat(),
                  "" if r["last_login"] is None else "9999-12-31T23:59:59.999999" if r["last_login"] == "infinity"
                  else r["last_login"].replace(tzinfo=None).isoformat(), r["updated_at"].isoformat(),
                  json.dumps(r["notes"])]
        lines.append(",".join(str(v) for v in values))
    return "\n".join(lines) + "\n"


# --- rendering ----------------------------------------------------------------------------------------------------


def _unscaled(value: decimal.Decimal, scale: int) -> str:
    """Kafka Connect's Decimal: the unscaled value's minimal big-endian two's complement, base64."""
    unscaled = int(value.scaleb(scale).to_integral_exact())
    size = (unscaled + (unscaled < 0)).bit_length() // 8 + 1
    return base64.b64encode(unscaled.to_bytes(size, "big", signed=True)).decode()


def _decimal(value: decimal.Decimal | None, mode: str, scale: int | None) -> Any:
    if value is None:
        return None
    if mode == "precise":
        if scale is None:  # NUMERIC without a declared scale: io.debezium.data.VariableScaleDecimal
            exponent = -value.as_tuple().exponent  # type: ignore[operator]
            return {"scale": exponent, "value": _unscaled(value, exponent)}
        return _unscaled(value, scale)
    if mode == "string":
        return f"{value:f}" if scale is None else f"{value:.{scale}f}"
    return float(value)


def _values(row: dict[str, Any] | None, mode: str, unavailable: tuple[str, ...] = (),
            key_only: bool = False) -> dict[str, Any] | None:
    if row is None:
        return None
    if key_only:  # REPLICA IDENTITY DEFAULT: the before-image holds only the key
        return {c: (row["id"] if c == "id" else None) for c in COLUMNS}
    login = row["last_login"]
    out = {
        "id": row["id"], "owner": row["owner"], "balance": _decimal(row["balance"], mode, 2),
        "rate": _decimal(row["rate"], mode, None),
        "opened": (row["opened"] - dt.date(1970, 1, 1)).days,
        "last_login": None if login is None else POS_INFINITY if login == "infinity"
        else (login - EPOCH) // dt.timedelta(microseconds=1),
        "updated_at": row["updated_at"].isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "notes": row["notes"],
    }
    for c in unavailable:
        out[c] = PLACEHOLDER
    return out


def _value_schema(mode: str) -> dict[str, Any]:
    def f(column: str, kind: str, optional: bool = True, **more: Any) -> dict[str, Any]:
        return {"type": kind, "optional": optional, **more, "field": column}

    decimal_field = ({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
                      "parameters": {"scale": "2", "connect.decimal.precision": "12"}} if mode == "precise"
                     else {"type": "string" if mode == "string" else "double"})
    rate = ({"type": "struct", "name": "io.debezium.data.VariableScaleDecimal", "version": 1,
             "fields": [{"type": "int32", "optional": False, "field": "scale"},
                        {"type": "bytes", "optional": False, "field": "value"}]} if mode == "precise"
            else {"type": "string" if mode == "string" else "double"})
    return {"type": "struct", "optional": True, "name": "pg.public.accounts.Value", "fields": [
        f("id", "int64", False), f("owner", "string", False), {**decimal_field, "optional": False, "field": "balance"},
        {**rate, "optional": True, "field": "rate"},
        f("opened", "int32", False, name="io.debezium.time.Date", version=1),
        f("last_login", "int64", name="io.debezium.time.MicroTimestamp", version=1),
        f("updated_at", "string", False, name="io.debezium.time.ZonedTimestamp", version=1),
        f("notes", "string"),
    ]}


def _envelope_schema(mode: str) -> dict[str, Any]:
    value = _value_schema(mode)
    source = {"type": "struct", "optional": False, "name": "io.debezium.connector.postgresql.Source", "fields": [
        {"type": "string", "optional": False, "field": "version"},
        {"type": "string", "optional": False, "field": "connector"},
        {"type": "string", "optional": False, "field": "name"},
        {"type": "int64", "optional": False, "field": "ts_ms"},
        {"type": "string", "optional": True, "name": "io.debezium.data.Enum", "version": 1,
         "parameters": {"allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,"
                                   "incremental"},
         "default": "false", "field": "snapshot"},
        {"type": "string", "optional": False, "field": "db"}, {"type": "string", "optional": False, "field": "schema"},
        {"type": "string", "optional": False, "field": "table"}, {"type": "int64", "optional": True, "field": "txId"},
        {"type": "int64", "optional": True, "field": "lsn"}, {"type": "int64", "optional": True, "field": "ts_us"},
        {"type": "int64", "optional": True, "field": "ts_ns"}], "field": "source"}
    transaction = {"type": "struct", "optional": True, "name": "event.block", "version": 1, "fields": [
        {"type": "string", "optional": False, "field": "id"},
        {"type": "int64", "optional": False, "field": "total_order"},
        {"type": "int64", "optional": False, "field": "data_collection_order"}], "field": "transaction"}
    return {"type": "struct", "optional": False, "name": "pg.public.accounts.Envelope", "version": 2, "fields": [
        {**value, "field": "before"}, {**value, "field": "after"}, source,
        {"type": "string", "optional": False, "field": "op"}, {"type": "int64", "optional": True, "field": "ts_ms"},
        {"type": "int64", "optional": True, "field": "ts_us"}, {"type": "int64", "optional": True, "field": "ts_ns"},
        transaction]}


def render(change: Change, config: str) -> list[str]:
    """The Kafka record values a sink in ``config`` writes for ``change``, as NDJSON lines (a delete is followed by
    its tombstone; the flattened transform writes deletes as rewritten rows and drops tombstones)."""
    wrapped, mode = config.startswith("wrapped"), config.partition("/")[2] or "string"
    if config == "flattened":
        if change.op in ("t", "m"):  # the transform passes these on as they are (here: an envelope)
            return render(change, "plain/double")
        row = (_values({"id": change.key}, "string", key_only=True) if change.op == "d"
               else _values(change.row, "string", change.unavailable))
        assert row is not None
        return [json.dumps({**row, "__op": change.op, "__lsn": change.lsn, "__source_ts_ms": change.ts_ms,
                            "__deleted": "true" if change.op == "d" else "false"})]
    source = {"version": "2.7.3.Final", "connector": "postgresql", "name": "pg", "ts_ms": change.ts_ms,
              "snapshot": (change.snapshot != "false") if config == "plain/double" else change.snapshot,
              "db": "bank", "schema": "public", "table": "accounts", "txId": change.txid, "lsn": change.lsn,
              "ts_us": change.ts_ms * 1000, "ts_ns": change.ts_ms * 1_000_000}
    if config == "plain/double":  # an older connector: no ts_us/ts_ns yet
        del source["ts_us"], source["ts_ns"]
    seen = change.ts_ms + 7
    envelope: dict[str, Any] = {
        "before": _values({"id": change.key}, mode, key_only=True) if change.op in ("u", "d") else None,
        "after": _values(change.row, mode, change.unavailable) if change.op in ("c", "u", "r") else None,
        "source": source, "op": change.op, "ts_ms": seen,
    }
    if config != "plain/double":
        envelope |= {"ts_us": seen * 1000, "ts_ns": seen * 1_000_000}
    if change.op == "m":
        envelope = {"source": {**source, "schema": "", "table": ""}, "op": "m", "ts_ms": seen,
                    "message": change.extra}
    if config == "wrapped/precise" and change.op not in ("r", "m"):
        envelope["transaction"] = {"id": f"{change.txid}:{change.lsn}", "total_order": 1, "data_collection_order": 1}
    lines = [json.dumps({"schema": _envelope_schema(mode), "payload": envelope} if wrapped else envelope)]
    if change.op == "d":
        lines.append(json.dumps({"schema": None, "payload": None}) if wrapped else "null")
    return lines


def files(changes: list[Change], configs: tuple[str, ...] = CONFIGS, per_file: int = 40, seed: int = 0,
          late: float = 0.1, again: float = 0.05) -> list[tuple[str, str]]:
    """(name, NDJSON text) of the files the feed lands in: ``per_file`` changes each, the files' configurations in
    turn; about ``late`` of the records are delivered a file late and ``again`` delivered twice."""
    rng = random.Random(seed)
    chunks = [changes[i:i + per_file] for i in range(0, len(changes), per_file)]
    out: list[list[str]] = [[] for _ in chunks]
    for i, chunk in enumerate(chunks):
        config = configs[i % len(configs)]
        for change in chunk:
            lines = render(change, config)
            target = i + 1 if rng.random() < late and i + 1 < len(chunks) else i
            out[target].extend(lines)
            if rng.random() < again:
                out[min(len(chunks) - 1, target + rng.randint(0, 1))].extend(lines[:1])
    return [(f"events-{i:04d}-{configs[i % len(configs)].replace('/', '-')}.ndjson", "\n".join(lines) + "\n")
            for i, lines in enumerate(out) if lines]

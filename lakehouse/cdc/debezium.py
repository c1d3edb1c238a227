"""Debezium change events in every form a feed lands them, read into one shape (:class:`Event`).

Forms, told apart event by event (one file may mix them):

- ``envelope``: ``{"op", "before", "after", "source": {"lsn", "ts_ms", "snapshot", ...}, "ts_ms", "ts_us",
  "ts_ns", "transaction"}`` (Kafka Connect's JsonConverter with ``schemas.enable=false``).
- ``wrapped envelope``: ``{"schema": {...}, "payload": <envelope>}`` (JsonConverter's default,
  ``schemas.enable=true``): values are decoded by the schema's logical types (``org.apache.kafka.connect.data.Decimal``
  base64 with its ``scale`` parameter, ``io.debezium.data.VariableScaleDecimal``, ``io.debezium.time.*`` and Kafka
  Connect's ``Date``/``Time``/``Timestamp``). A ``null`` payload is a tombstone.
- ``flattened`` and ``wrapped flattened``: the row of the ExtractNewRecordState transform, with the metadata its
  ``add.fields`` adds (``__op``, ``__lsn`` or ``__source_lsn``, ``__source_ts_ms``, ...) and, on a delete rewritten
  by ``delete.tombstone.handling.mode=rewrite``, ``__deleted: "true"``.

Without a schema a value is decoded by the model's type of its column (see :func:`decode`). Operations: ``c``, ``u``,
``r`` (snapshot read) open a version, ``d`` closes one, ``t`` (truncate) closes every current row, ``m`` (a logical
decoding message) is no row change.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import functools
import json
import re
from dataclasses import dataclass
from typing import Any

import polars as pl

OPS = ("c", "u", "d", "r", "t", "m")
PREFIX = "__"  # ExtractNewRecordState's add.fields.prefix
LSN_FIELDS = ("__lsn", "__source_lsn")
TS_FIELDS = (("__source_ts_ms", 1), ("__source_ts_us", 1_000), ("__source_ts_ns", 1_000_000), ("__ts_ms", 1),
             ("__ts_us", 1_000), ("__ts_ns", 1_000_000))
EPOCH = dt.datetime(1970, 1, 1)
# PostgreSQL's +/-infinity timestamps, as the connector sends them (and beyond them, Long.MAX/MIN in nanoseconds)
POS_INFINITY_TS, NEG_INFINITY_TS = 9223372036825200000, -9223372036832400000
# ... stored as the ends of the range Delta defines for timestamps
MAX_TIMESTAMP, MIN_TIMESTAMP = "9999-12-31T23:59:59.999999", "0001-01-01T00:00:00.000000"
BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
DECIMAL = "org.apache.kafka.connect.data.Decimal"
VARIABLE_DECIMAL = "io.debezium.data.VariableScaleDecimal"
# logical type -> (kind, units per second or per day)
TEMPORAL = {
    "io.debezium.time.Date": ("date", 1), "org.apache.kafka.connect.data.Date": ("date", 1),
    "io.debezium.time.Timestamp": ("timestamp", 1_000), "org.apache.kafka.connect.data.Timestamp": ("timestamp", 1_000),
    "io.debezium.time.MicroTimestamp": ("timestamp", 1_000_000),
    "io.debezium.time.NanoTimestamp": ("timestamp", 1_000_000_000),
    "io.debezium.time.Time": ("time", 1_000), "org.apache.kafka.connect.data.Time": ("time", 1_000),
    "io.debezium.time.MicroTime": ("time", 1_000_000), "io.debezium.time.NanoTime": ("time", 1_000_000_000),
    "io.debezium.time.ZonedTimestamp": ("zoned", 0), "io.debezium.time.ZonedTime": ("text", 0),
}
UNITS = {"ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


class Malformed(Exception):
    """An event that cannot be applied: ``check`` (the quarantine reason), the ``column`` or field it is about, the
    ``value`` as landed and a ``reason`` a person can act on."""

    def __init__(self, check: str, column: str, value: Any, reason: str) -> None:
        super().__init__(reason)
        self.check, self.column, self.reason = check, column, reason
        self.value = value if value is None or isinstance(value, str) else json.dumps(value)


class Unavailable:
    """A value the connector did not send (an unchanged TOASTed column): the column keeps its previous value."""


UNAVAILABLE = Unavailable()


@dataclass(frozen=True)
class Options:
    """What an event does not carry (a :class:`lakehouse.Cdc`'s settings): see there."""

    decimal_handling: str = "string"
    scales: tuple[tuple[str, int], ...] = ()
    unavailable_value: str = "__debezium_unavailable_value"

    @functools.cached_property
    def placeholders(self) -> tuple[Any, ...]:
        """The placeholder as each column type carries it: text, bytea as base64 of its bytes, a text array."""
        raw = self.unavailable_value
        text = bytes.fromhex(raw[4:]).decode("latin-1") if raw.startswith("hex:") else raw
        return (text, base64.b64encode(text.encode("latin-1")).decode(), [text])


@dataclass(frozen=True)
class Event:
    """One change event read: its ``form``, ``op``, the row image it applies (the after-image, or the before-image of
    a delete; None for a truncate or a message), that image's field schemas by name (wrapped forms), ``lsn`` and the
    commit time ``ts_ms``."""

    form: str
    op: str
    image: dict[str, Any] | None
    fields: dict[str, dict[str, Any]] | None
    lsn: int | None
    ts_ms: int | None


def read(text: str) -> Event | None:
    """The event in one bronze ``event`` (JSON text); None for a wrapped tombstone (a null payload). Raises
    :class:`Malformed` naming the field and the form."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise Malformed("malformed_record", "event", text, f"invalid JSON: {e.msg} at column {e.colno}") from e
    if not isinstance(obj, dict):
        raise Malformed("malformed_record", "event", text, "expected a JSON object")
    schema = None
    wrapped = "payload" in obj and "schema" in obj and len(obj) == 2
    if wrapped:
        schema, obj = obj["schema"], obj["payload"]
        if obj is None:
            return None
        if not isinstance(obj, dict):
            raise Malformed("malformed_record", "payload", obj, "wrapped event: the payload is not a JSON object")
        if schema is not None and not isinstance(schema, dict):
            raise Malformed("malformed_record", "schema", schema, "wrapped event: the schema is not a JSON object")
    if _is_envelope(obj):
        return _envelope(obj, schema, "wrapped envelope" if wrapped else "envelope")
    return _flattened(obj, schema, "wrapped flattened" if wrapped else "flattened")


def _is_envelope(obj: dict[str, Any]) -> bool:
    return ("op" in obj and isinstance(obj.get("source"), dict)) or ("before" in obj and "after" in obj)


def _envelope(obj: dict[str, Any], schema: dict[str, Any] | None, form: str) -> Event:
    op = obj.get("op")
    if op not in OPS:
        raise Malformed("unknown_op", "op", op, f"{form}: op must be one of {', '.join(OPS)}")
    if op == "m":
        return Event(form, op, None, None, None, None)
    source = obj.get("source")
    if not isinstance(source, dict):
        raise Malformed("missing_lsn", "source", source, f"{form}: no source block (source.lsn orders the events)")
    lsn = source.get("lsn")
    if not isinstance(lsn, int) or isinstance(lsn, bool):
        raise Malformed("missing_lsn", "source", json.dumps(source),
                        f"{form}: source.lsn is not a whole number (a PostgreSQL connector's log position)")
    ts = _time_ms(source, ("ts_ms", 1), ("ts_us", 1_000), ("ts_ns", 1_000_000))
    if ts is None:
        ts = _time_ms(obj, ("ts_ms", 1), ("ts_us", 1_000), ("ts_ns", 1_000_000))
    if ts is None:
        raise Malformed("missing_ts_ms", "source", json.dumps(source), f"{form}: no commit time (source.ts_ms)")
    if op == "t":
        return Event(form, op, None, None, lsn, ts)
    side = "before" if op == "d" else "after"
    image = obj.get(side)
    if not isinstance(image, dict):
        raise Malformed(f"missing_{side}", side, image, f"{form}: a{'n' if side == 'after' else ''} {op!r} event "
                        f"needs its {side} image")
    return Event(form, op, image, _fields(schema, side), lsn, ts)


def _flattened(obj: dict[str, Any], schema: dict[str, Any] | None, form: str) -> Event:
    deleted = obj.get("__deleted")
    op = obj.get("__op")
    if deleted in ("true", True):
        op = "d"
    elif op is None:
        op = "u"  # without __op a row is the key's new state (c, u and r open a version alike)
    if op not in OPS:
        raise Malformed("unknown_op", "__op", op, f"{form}: __op must be one of {', '.join(OPS)}")
    if op == "m":
        return Event(form, op, None, None, None, None)
    lsn = next((obj[f] for f in LSN_FIELDS if f in obj), None)
    if isinstance(lsn, str) and lsn.strip().lstrip("-").isdigit():
        lsn = int(lsn)
    if not isinstance(lsn, int) or isinstance(lsn, bool):
        raise Malformed("missing_lsn", "__lsn", lsn, f"{form}: no __lsn (add lsn to the transform's add.fields)")
    ts = _time_ms(obj, *TS_FIELDS)
    if ts is None:
        raise Malformed("missing_ts_ms", "__source_ts_ms", None,
                        f"{form}: no __source_ts_ms (add source.ts_ms to the transform's add.fields)")
    image = {k: v for k, v in obj.items() if not k.startswith(PREFIX)}
    return Event(form, op, None if op == "t" else image, _fields(schema, None), lsn, ts)


def _fields(schema: dict[str, Any] | None, side: str | None) -> dict[str, dict[str, Any]] | None:
    """The field schemas of the row image (``side`` of an envelope, or the flattened row itself)."""
    if not schema:
        return None
    fields = schema.get("fields") or []
    if side is not None:
        found = next((f for f in fields if isinstance(f, dict) and f.get("field") == side), None)
        fields = (found or {}).get("fields") or []
    return {f["field"]: f for f in fields if isinstance(f, dict) and "field" in f}


def _time_ms(obj: dict[str, Any], *names: tuple[str, int]) -> int | None:
    for name, per_ms in names:
        value = obj.get(name)
        if isinstance(value, bool) or value is None:
            continue
        try:
            return int(value) // per_ms
        except (TypeError, ValueError):
            continue
    return None


def decode(value: Any, column: str, dtype: pl.DataType, field: dict[str, Any] | None, options: Options,
           form: str) -> str | Unavailable | None:
    """A value of an event's row image as text for the model's type of ``column`` (the typed cast follows), or
    :data:`UNAVAILABLE`. By the field's schema when the event has one; otherwise by the model's type: a whole number
    is days since the epoch for a ``Date``, the model's time unit for a ``Datetime`` and microseconds for a ``Time``;
    a string in a ``Decimal`` or ``Float`` column is read per ``decimal_handling``."""
    if value is None:
        return None
    if any(value == p for p in options.placeholders):
        return UNAVAILABLE
    name = (field or {}).get("name")
    try:
        if name == DECIMAL and isinstance(value, str):
            return _unscaled(value, int((field or {}).get("parameters", {}).get("scale", 0)))
        if isinstance(value, dict) and set(value) == {"scale", "value"}:  # VariableScaleDecimal, schema or none
            return _unscaled(str(value["value"]), int(value["scale"]))
        if name in TEMPORAL:
            return _temporal(value, *TEMPORAL[name], dtype)
        return _by_model(value, column, dtype, options, form)
    except Malformed:
        raise
    except (ValueError, TypeError, OverflowError, binascii.Error, decimal.InvalidOperation) as e:
        logical = f" ({name})" if name else ""
        raise Malformed("undecodable", column, value, f"{form}: {column}{logical}: cannot decode {value!r}: {e}") from e


def _by_model(value: Any, column: str, dtype: pl.DataType, options: Options, form: str) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    numeric = dtype.is_decimal() or dtype.is_float()
    if numeric and isinstance(value, str):
        if options.decimal_handling == "precise":
            scale = dict(options.scales).get(column)
            if scale is None and isinstance(dtype, pl.Decimal):
                scale = dtype.scale
            if scale is None:
                raise Malformed("undecodable", column, value, f"{form}: {column}: a precise decimal without a schema "
                                f"needs its scale: declare Cdc(scales={{{column!r}: N}})")
            return _unscaled(value, scale)
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if dtype == pl.Date:
            return _temporal(value, "date", 1, dtype)
        if isinstance(dtype, pl.Datetime):
            return _temporal(value, "timestamp", UNITS[dtype.time_unit or "us"], dtype)
        if dtype == pl.Time:
            return _temporal(value, "time", 1_000_000, dtype)
    if isinstance(value, str) and isinstance(dtype, pl.Datetime):
        return _temporal(value, "zoned", 0, dtype)
    if isinstance(value, str):
        return value
    return json.dumps(value)


def hint(check: str, column: str, value: str | None, dtype: pl.DataType, options: Options) -> str | None:
    """Why a value in a numeric column may have failed its type: base64 text is a precise decimal."""
    if (check.startswith("dtype(") and value and (dtype.is_decimal() or dtype.is_float())
            and options.decimal_handling != "precise" and BASE64.fullmatch(value) and not NUMBER.fullmatch(value)):
        return (f"{column}: {value!r} looks like base64, i.e. decimal.handling.mode=precise: declare "
                "Cdc(decimal_handling='precise') for events without a schema")
    return None


def _unscaled(text: str, scale: int) -> str:
    """Base64 of a big-endian two's-complement unscaled integer, at ``scale``, as a decimal literal."""
    unscaled = int.from_bytes(base64.b64decode(text, validate=True), "big", signed=True)
    return f"{decimal.Decimal(unscaled).scaleb(-scale):f}"


def _temporal(value: Any, kind: str, per: int, dtype: pl.DataType) -> str:
    if kind == "text":
        return str(value)
    if kind == "zoned":
        text = str(value).strip()
        if text.lower() in ("infinity", "+infinity", "-infinity"):
            end = MIN_TIMESTAMP if text.startswith("-") else MAX_TIMESTAMP
            return end + ("+00:00" if _zoned(dtype) else "")
        if _zoned(dtype):
            return text
        # a zoned value into a column without a zone: its UTC time
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        return moment.astimezone(dt.UTC).replace(tzinfo=None).isoformat() if moment.tzinfo else text
    n = int(value)
    if kind == "date":
        return (dt.date(1970, 1, 1) + dt.timedelta(days=n)).isoformat()
    if kind == "time":
        seconds, fraction = divmod(n, per)
        return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{fraction * 10**9 // per:09d}"
    if n >= POS_INFINITY_TS or n <= NEG_INFINITY_TS:
        text = MAX_TIMESTAMP if n > 0 else MIN_TIMESTAMP
    else:
        seconds, fraction = divmod(n, per)
        moment = EPOCH + dt.timedelta(seconds=seconds)
        text = f"{moment:%Y-%m-%dT%H:%M:%S}.{fraction * 10**9 // per:09d}"
    return text + ("+00:00" if _zoned(dtype) else "")  # Debezium's TIMESTAMP is the database's local time as UTC


def _zoned(dtype: pl.DataType) -> bool:
    return isinstance(dtype, pl.Datetime) and dtype.time_zone is not None

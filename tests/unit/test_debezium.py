"""Debezium's documented forms (tests/debezium.py's generator, one configuration per converter set-up) read into the
same typed events, applied equal to one-by-one application in LSN order; what is genuinely malformed is rejected
with a reason naming the field and the form."""

from __future__ import annotations

import base64
import datetime as dt
import json
from decimal import Decimal
from typing import Any

import polars as pl
import pytest

from lakehouse import Cdc
from lakehouse.cdc import chains, current, parse_events
from lakehouse.cdc.debezium import Options
from lakehouse.errors import ConfigError
from tests import debezium as feed

KEYS = ("id",)
MODEL = list(feed.COLUMNS)


def bronze(lines: list[str]) -> pl.DataFrame:
    """Bronze rows of a change-event source: the events as landed (a bare ``null`` tombstone is no record)."""
    kept = [line for line in lines if line != "null"]
    return pl.DataFrame({"event": kept, "_source_file": ["raw/accounts_cdc/a.ndjson"] * len(kept),
                         "_source_line": list(range(1, len(kept) + 1))},
                        schema={"event": pl.String, "_source_file": pl.String, "_source_line": pl.Int64})


def changes(n: int = 120, seed: int = 4) -> tuple[dict[int, dict[str, Any]], list[feed.Change]]:
    start = feed.initial(6, seed=seed)
    return start, feed.feed(start, n, seed=seed)


def apply_all(start: dict[int, dict[str, Any]], events: pl.DataFrame) -> pl.DataFrame:
    """The current state after applying ``events`` in one batch to a history seeded with ``start``."""
    seed = apply_history(start)
    truncates = events.filter(pl.col("_op") == "t").select("_lsn", "_ts_ms")
    versions = chains(seed, events.drop("_source_file", "_source_line"), KEYS, MODEL, truncates,
                      all_keys=truncates.height > 0)
    touched = pl.concat([seed.select(KEYS), events.select(KEYS).drop_nulls()]).unique()
    state = current(versions, touched, KEYS)
    return state.filter(~pl.col("__delete")).select(MODEL).sort("id")


@pytest.mark.parametrize("config", feed.CONFIGS)
def test_each_converter_configuration_applies_equal_to_one_by_one_application(config: str) -> None:
    start, made = changes()
    lines = [line for c in made for line in feed.render(c, config)]

    parsed = parse_events(bronze(lines), feed.Account, KEYS)

    assert parsed.rejected.height == 0, parsed.rejected.to_dicts()
    # the logical message, and in wrapped forms the {"schema": null, "payload": null} tombstones, change no row
    deletes = sum(c.op == "d" for c in made)
    assert parsed.skipped == 1 + (deletes if config.startswith("wrapped") else 0)
    assert parsed.events.height == sum(c.op != "m" for c in made)
    got = apply_all(start, parsed.events)
    assert got.equals(feed.expected_frame(feed.replay(start, made)))
    assert feed.PLACEHOLDER not in got.get_column("notes").to_list()


def test_every_form_decodes_to_the_same_typed_values() -> None:
    _, made = changes(60, seed=9)
    frames = []
    for config in feed.CONFIGS:
        lines = [line for c in made for line in feed.render(c, config)
                 if not line.startswith(("null", '{"schema": null'))]
        events = parse_events(bronze(lines), feed.Account, KEYS).events
        frames.append(events.filter(pl.col("_op") != "d").select(*MODEL, "_op", "_lsn", "_ts_ms", "_unavailable"))
    for other in frames[1:]:
        assert other.equals(frames[0])
    first = made[0]  # a snapshot read: last_login is PostgreSQL's 'infinity' in this draw or a real time
    row = frames[0].row(0, named=True)
    assert row["balance"] == first.row["balance"] and row["opened"] == first.row["opened"]  # type: ignore[index]
    assert row["updated_at"] == first.row["updated_at"]  # type: ignore[index]


def test_toast_placeholder_keeps_the_previous_value_even_when_the_previous_event_comes_later() -> None:
    start = {1: feed.initial(1)[1]}
    row = dict(start[1])
    update_a = feed.Change("u", 1, {**row, "owner": "a", "notes": "fresh notes"}, 100, 1_700_000_200_000)
    update_b = feed.Change("u", 1, {**row, "owner": "b", "notes": "fresh notes"}, 200, 1_700_000_300_000,
                           unavailable=("notes",))
    # the later update (notes unsent) applied first, in its own batch; then the earlier one arrives
    one = parse_events(bronze(feed.render(update_b, "wrapped/string")), feed.Account, KEYS).events
    assert one.get_column("_unavailable").to_list() == ['["notes"]'] and one.get_column("notes").to_list() == [None]
    two = parse_events(bronze(feed.render(update_a, "flattened")), feed.Account, KEYS).events
    seed = apply_history(start)
    history = chains(seed, one.drop("_source_file", "_source_line"), KEYS, MODEL)
    assert history.filter(pl.col("is_current")).get_column("notes").to_list() == [start[1]["notes"]]
    history = chains(history, two.drop("_source_file", "_source_line"), KEYS, MODEL)

    live = history.filter(pl.col("is_current")).row(0, named=True)
    assert (live["owner"], live["notes"], live["_unavailable"]) == ("b", "fresh notes", '["notes"]')
    assert history.sort("_lsn").get_column("notes").to_list() == [start[1]["notes"], "fresh notes", "fresh notes"]


def apply_history(start: dict[int, dict[str, Any]]) -> pl.DataFrame:
    return feed.expected_frame(start).with_columns(
        pl.lit(None, pl.Datetime("us", "UTC")).alias("valid_from"), pl.lit(None, pl.Datetime("us", "UTC")).alias(
            "valid_to"), pl.lit(True).alias("is_current"), pl.lit(False).alias("is_deleted"),
        pl.lit(None, pl.String).alias("_op"), pl.lit(-1, pl.Int64).alias("_lsn"),
        pl.lit(None, pl.Int64).alias("_end_lsn"),
        pl.lit(None, pl.String).alias("_end_op"), pl.lit(None, pl.String).alias("_unavailable"))


def envelope(after: dict[str, Any], lsn: int = 7, op: str = "c") -> dict[str, Any]:
    return {"before": None, "after": after, "source": {"lsn": lsn, "ts_ms": 1_700_000_000_000}, "op": op}


ROW = {"id": 5, "owner": "o", "balance": "12.50", "rate": None, "opened": 19000, "last_login": None,
       "updated_at": "2026-01-02T03:04:05Z", "notes": None}


def test_precise_decimals_without_a_schema_need_the_setting_and_a_scale() -> None:
    cents = base64.b64encode((-1250).to_bytes(2, "big", signed=True)).decode()  # -12.50 at scale 2
    rate = base64.b64encode((525).to_bytes(2, "big", signed=True)).decode()     # 0.0525 at scale 4
    lines = [json.dumps(envelope({**ROW, "balance": cents})), json.dumps(envelope({**ROW, "balance": cents,
                                                                                 "rate": rate}, lsn=8))]
    raw = bronze(lines)

    # by default a string is a decimal literal: base64 is rejected, with the hint
    plain = parse_events(raw, feed.Account, KEYS)
    assert plain.rejected.select("check", "column").rows() == [("dtype('Decimal(precision=12, scale=2)')",
                                                                "balance")] * 2
    assert "decimal_handling='precise'" in plain.rejected.get_column("failures")[0]
    # declared precise: the model's scale for a Decimal; a Float column needs its scale declared
    precise = parse_events(raw, feed.Account, KEYS, Options("precise"))
    assert precise.events.get_column("balance").to_list() == [Decimal("-12.50")]
    assert precise.rejected.select("check", "column").rows() == [("undecodable", "rate")]
    assert "scales={'rate': N}" in precise.rejected.get_column("failures")[0]
    scaled = parse_events(raw, feed.Account, KEYS, Options("precise", (("rate", 4),)))
    assert scaled.events.get_column("rate").to_list() == [None, 0.0525]


def test_malformed_events_are_rejected_naming_the_field_and_the_form() -> None:
    wrapped = json.loads(feed.render(changes(5)[1][0], "wrapped/precise")[0])
    wrapped["payload"]["after"]["balance"] = "not*base64"
    flat = {**ROW, "__op": "u", "__source_ts_ms": 1}
    lines = [json.dumps(wrapped), json.dumps(flat), json.dumps({**envelope(ROW), "op": "x"}),
             json.dumps({"schema": {}, "payload": [1]}), '{"op": "c", "after": {"id": 1}, "source": {"lsn": "7"}}',
             json.dumps(envelope({**ROW, "id": feed.PLACEHOLDER}))]

    rejected = parse_events(bronze(lines), feed.Account, KEYS).rejected

    assert rejected.select("check", "column").rows() == [
        ("undecodable", "balance"), ("missing_lsn", "__lsn"), ("unknown_op", "op"), ("malformed_record", "payload"),
        ("missing_lsn", "source"), ("undecodable", "id")]
    reasons = [json.loads(f)[0]["reason"] for f in rejected.get_column("failures")]
    assert reasons[0].startswith("wrapped envelope: balance (org.apache.kafka.connect.data.Decimal)")
    assert reasons[1].startswith("flattened: no __lsn") and reasons[4].startswith("envelope: source.lsn")


def test_a_truncate_closes_every_current_row_or_is_held_as_declared() -> None:
    start, made = changes(40, seed=2)
    lines = [line for c in made for line in feed.render(c, "plain/double")]
    truncate = next(c for c in made if c.op == "t")

    applied = parse_events(bronze(lines), feed.Account, KEYS)
    held = parse_events(bronze(lines), feed.Account, KEYS, truncate="quarantine")
    failing = parse_events(bronze(lines), feed.Account, KEYS, truncate="fail")

    assert applied.events.filter(pl.col("_op") == "t").select("_lsn").rows() == [(truncate.lsn,)]
    assert held.rejected.select("check", "action").rows() == [("truncate", "quarantine")]
    assert failing.rejected.select("check", "action").rows() == [("truncate", "fail")]
    without = [c for c in made if c.op != "t"]
    assert apply_all(start, held.events).equals(feed.expected_frame(feed.replay(start, without)))


def test_zoned_infinity_and_temporal_types_by_schema_or_by_model() -> None:
    after = {**ROW, "updated_at": "infinity", "last_login": feed.POS_INFINITY, "opened": -1}
    events = parse_events(bronze([json.dumps(envelope(after))]), feed.Account, KEYS).events
    row = events.row(0, named=True)
    assert row["updated_at"] == dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)
    assert row["last_login"] == dt.datetime(9999, 12, 31, 23, 59, 59, 999999)
    assert row["opened"] == dt.date(1969, 12, 31)


def test_cdc_settings_are_checked_where_declared() -> None:
    with pytest.raises(ConfigError, match="truncate must be apply, fail or quarantine"):
        Cdc("accounts", source="x", truncate="drop")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"scales\['rate'\] must be a whole number"):
        Cdc("accounts", source="x", scales={"rate": -1})
    assert Cdc("accounts", source="x", scales={"rate": 4}).scale("rate") == 4


def test_the_commit_time_comes_from_ts_us_or_ts_ns_when_ts_ms_is_absent() -> None:
    base = {"before": None, "after": ROW, "op": "c"}
    lines = [json.dumps({**base, "source": {"lsn": 1, "ts_us": 1_700_000_000_123_456}}),
             json.dumps({**base, "source": {"lsn": 2, "ts_ns": 1_700_000_000_456_000_000}}),
             json.dumps({**base, "source": {"lsn": 3}, "ts_us": 1_700_000_000_789_000}),
             json.dumps({**base, "source": {"lsn": 4, "snapshot": True, "ts_ms": 1_700_000_000_999}})]

    events = parse_events(bronze(lines), feed.Account, KEYS).events

    assert events.get_column("_ts_ms").to_list() == [1_700_000_000_123, 1_700_000_000_456, 1_700_000_000_789,
                                                     1_700_000_000_999]

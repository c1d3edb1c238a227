"""CDC: parsing Debezium envelopes, and version chains (SCD 1 and 2) against an oracle that applies the events one by
one in LSN order, whatever batches and order they arrive in, duplicates included."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import random
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lakehouse.cdc import SNAPSHOT_LSN, chains, current, parse_events
from lakehouse.quality.validation import ROW_ID
from schemas.tpch import Customer

KEYS = ("c_custkey",)
COLUMNS = ["c_custkey", "c_acctbal"]
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def customer(key: int, balance: float) -> dict[str, Any]:
    return {"c_custkey": key, "c_name": f"Customer#{key}", "c_address": "x", "c_nationkey": 1, "c_phone": "p",
            "c_acctbal": balance, "c_mktsegment": "BUILDING", "c_comment": "k"}


def envelope(op: Any, before: Any, after: Any, lsn: Any, ts: int = 1000) -> dict[str, str | None]:
    """A bronze row of a change event: the envelope's JSON text."""
    event = {"op": op, "before": before, "after": after,
             "source": {"lsn": lsn, "ts_ms": ts} if lsn is not None else {"ts_ms": ts}, "ts_ms": ts + 1}
    return {"event": json.dumps(event), "_source_file": "raw/customer_cdc/a.ndjson"}


def test_envelopes_become_typed_events_and_malformed_ones_are_rejected_with_the_reason() -> None:
    rows = [
        envelope("c", None, customer(10, 5.5), 100),
        envelope("u", customer(10, 5.5), customer(10, 7.25), 101),
        envelope("d", customer(10, 7.25), None, 102),
        envelope("x", None, customer(11, 1.0), 103),                       # unknown op
        envelope("u", customer(12, 1.0), None, 104),                       # no after-image
        envelope("c", None, customer(13, 1.0), None),                      # no lsn
        envelope("c", None, "{not json", 105),                             # after is not JSON
        envelope("c", None, {**customer(14, 1.0), "c_acctbal": "lots"}, 106),  # fails the model
        envelope("d", {"c_custkey": "abc"}, None, 107),                    # a delete whose key does not parse
    ]
    raw = pl.DataFrame(rows, schema={c: pl.String for c in rows[0]})

    events, rejected, _ = dataclasses.astuple(parse_events(raw, Customer, KEYS))

    assert events.select("c_custkey", "c_acctbal", "_op", "_lsn").rows() == [
        (10, 5.5, "c", 100), (10, 7.25, "u", 101), (10, None, "d", 102)]
    assert events.get_column("_source_file").to_list() == ["raw/customer_cdc/a.ndjson"] * 3
    assert rejected.select(ROW_ID, "check", "column").rows() == [
        (3, "unknown_op", "op"), (4, "missing_after", "after"), (5, "missing_lsn", "source"),
        (6, "missing_after", "after"), (7, "dtype('Float64')", "c_acctbal"), (8, "dtype('Int64')", "c_custkey")]


# --- chains against the oracle ------------------------------------------------------------------------------------

Event = tuple[int, str, float | None, int]  # key, op, balance, lsn


def oracle(snapshot: dict[int, float], events: list[Event]) -> tuple[dict[int, float], dict[int, list[tuple]]]:
    """Apply events one by one in LSN order; an event not newer than the key's last applied LSN is ignored."""
    state: dict[int, float | None] = dict(snapshot)
    applied: dict[int, int] = dict.fromkeys(snapshot, SNAPSHOT_LSN)
    history: dict[int, list[tuple]] = {k: [(v, SNAPSHOT_LSN)] for k, v in snapshot.items()}
    for key, op, balance, lsn in sorted(set(events), key=lambda e: e[3]):
        if lsn <= applied.get(key, SNAPSHOT_LSN - 1):
            continue
        applied[key] = lsn
        if op == "d":
            state.pop(key, None)
        else:
            state[key] = balance
            history.setdefault(key, []).append((balance, lsn))
    return {k: v for k, v in state.items() if v is not None}, history


def events_frame(events: list[Event]) -> pl.DataFrame:
    return pl.DataFrame(
        {"c_custkey": [e[0] for e in events], "c_acctbal": [e[2] for e in events], "_op": [e[1] for e in events],
         "_lsn": [e[3] for e in events], "_ts_ms": [e[3] * 1000 for e in events],
         "_unavailable": [None] * len(events)},
        schema={"c_custkey": pl.Int64, "c_acctbal": pl.Float64, "_op": pl.String, "_lsn": pl.Int64,
                "_ts_ms": pl.Int64, "_unavailable": pl.String},
    )


def seed_history(snapshot: dict[int, float]) -> pl.DataFrame:
    return pl.DataFrame(
        {"c_custkey": list(snapshot), "c_acctbal": list(snapshot.values()), "valid_from": [None] * len(snapshot),
         "valid_to": [None] * len(snapshot), "is_current": [True] * len(snapshot),
         "is_deleted": [False] * len(snapshot),
         "_op": [None] * len(snapshot), "_lsn": [SNAPSHOT_LSN] * len(snapshot), "_end_lsn": [None] * len(snapshot),
         "_end_op": [None] * len(snapshot), "_unavailable": [None] * len(snapshot)},
        schema={"c_custkey": pl.Int64, "c_acctbal": pl.Float64, "valid_from": pl.Datetime("us", "UTC"),
                "valid_to": pl.Datetime("us", "UTC"), "is_current": pl.Boolean, "is_deleted": pl.Boolean,
                "_op": pl.String, "_lsn": pl.Int64,
                "_end_lsn": pl.Int64, "_end_op": pl.String, "_unavailable": pl.String},
    )


event = st.tuples(st.integers(1, 6), st.sampled_from(["c", "u", "u", "d", "r"]), st.sampled_from([1.0, 2.0, 3.5]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshot=st.dictionaries(st.integers(1, 4), st.sampled_from([0.0, 9.0]), max_size=4),
       drawn=st.lists(event, max_size=30), batches=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_property_chains_in_any_batches_and_order_equal_sequential_application(
    snapshot: dict[int, float], drawn: list[tuple[int, str, float]], batches: int, seed: int
) -> None:
    rng = random.Random(seed)
    events: list[Event] = [(k, op, None if op == "d" else b, 100 + i) for i, (k, op, b) in enumerate(drawn)]
    delivered = events + [e for e in events if rng.random() < 0.2]  # duplicates
    rng.shuffle(delivered)  # out of order across batches
    history = seed_history(snapshot)
    size = max(1, -(-len(delivered) // batches))
    for i in range(0, len(delivered), size):
        batch = events_frame(delivered[i : i + size])
        versions = chains(history, batch, KEYS, ["c_acctbal"])
        history = pl.concat([history.join(batch.select("c_custkey").unique(), on="c_custkey", how="anti"),
                             versions.select(history.columns)])
        state = current(versions, batch, KEYS)
        assert set(state.filter(pl.col("__delete")).get_column("c_custkey")).isdisjoint(
            set(state.filter(~pl.col("__delete")).get_column("c_custkey")))

    wanted_state, wanted_history = oracle(snapshot, events)
    live = history.filter(pl.col("is_current"))
    assert dict(live.select("c_custkey", "c_acctbal").rows()) == wanted_state
    got = {}
    versions = history.filter(~pl.col("is_deleted"))
    for key, group in versions.sort("c_custkey", "_lsn").group_by("c_custkey", maintain_order=True):
        got[key[0]] = list(group.select("c_acctbal", "_lsn").rows())
    # every version the oracle's sequence opened, in LSN order (a key's versions are those of its non-delete events)
    assert got == {k: v for k, v in wanted_history.items()}
    # validity: each version ends where the next event of its key begins; exactly the last open one is current
    for _, group in versions.sort("c_custkey", "_lsn").group_by("c_custkey", maintain_order=True):
        rows = group.to_dicts()
        for r in rows:
            assert r["valid_from"] is None or r["valid_to"] is None or r["valid_from"] <= r["valid_to"]
        for a, b in itertools.pairwise(rows):
            assert a["valid_to"] is not None and not a["is_current"]
            assert a["valid_from"] is None or a["valid_to"] <= b["valid_from"]
        assert sum(r["is_current"] for r in rows) <= 1
        assert rows[-1]["is_current"] == (rows[-1]["_end_lsn"] is None)


def test_a_model_rule_whose_action_is_fail_marks_the_event_failing() -> None:
    from typing import ClassVar

    class StrictCustomer(Customer):
        class Config:
            metadata: ClassVar[dict[str, Any]] = {"actions": {"c_acctbal.dtype": "fail"}}

    rows = [envelope("c", None, customer(20, 1.0), 200),
            envelope("c", None, {**customer(21, 1.0), "c_acctbal": "lots"}, 201)]
    raw = pl.DataFrame(rows, schema={c: pl.String for c in rows[0]})

    parse = parse_events(raw, StrictCustomer, KEYS)
    events, rejected = parse.events, parse.rejected

    assert events.get_column("c_custkey").to_list() == [20]
    assert rejected.select(ROW_ID, "check", "action").rows() == [(1, "dtype('Float64')", "fail")]


def test_a_delete_keyed_by_a_date_parses_its_key_and_rejects_one_that_does_not_parse() -> None:
    import pandera.polars as pa

    class Daily(pa.DataFrameModel):
        day: dt.date
        amount: float

    def day(value: str) -> dict[str, Any]:
        return {"day": value, "amount": 1.0}

    rows = [envelope("c", None, day("2026-02-03"), 1), envelope("d", day("2026-02-03"), None, 2),
            envelope("d", day("2026-13-45"), None, 3)]
    raw = pl.DataFrame(rows, schema={c: pl.String for c in rows[0]})

    parse = parse_events(raw, Daily, ("day",))
    events, rejected = parse.events, parse.rejected

    assert events.select("day", "_op").rows() == [(dt.date(2026, 2, 3), "c"), (dt.date(2026, 2, 3), "d")]
    assert rejected.select(ROW_ID, "check", "column", "value").rows() == [(2, "dtype('Date')", "day", "2026-13-45")]

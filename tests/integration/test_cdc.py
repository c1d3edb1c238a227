"""Debezium change events through the pipeline: silver.customer equals applying every event one by one in LSN order
on top of the snapshot, whatever order and batches the files land in, duplicates included; silver.customer_history
holds every version with its validity; malformed events go to quarantine with the reason; reruns and crashes between
the two commits change nothing."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from deltalake import DeltaTable

import lakehouse
from examples.tpch.demo import cdc_event_files
from lakehouse.cdc import SNAPSHOT_LSN
from tests.conftest import ANY_SHARE, Lake
from tests.harness import versions
from tests.oracle import SORT, assert_frames_match, expected

pytestmark = pytest.mark.integration

COMPARED = ["c_custkey", "c_name", "c_address", "c_nationkey", "c_phone", "c_acctbal", "c_mktsegment", "c_comment"]


def land_events(lake: Lake, events: int = 400, files: int = 4, seed: int = 3) -> list[Path]:
    snapshot = pl.read_csv(lake.raw / "customer/customer.csv", infer_schema=False)
    paths = []
    for i, text in enumerate(cdc_event_files(snapshot, events, files, seed=seed)):
        path = lake.raw / f"customer_cdc/events-{i:04d}.ndjson"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        paths.append(path)
    return paths


def oracle(lake: Lake, paths: list[Path]) -> pl.DataFrame:
    """The snapshot, then every distinct event applied in LSN order."""
    snapshot = pl.read_csv(lake.raw / "customer/customer.csv", infer_schema=False)
    state: dict[int, dict[str, Any]] = {int(r["c_custkey"]): r for r in snapshot.iter_rows(named=True)}
    events = {}
    for path in paths:
        for line in path.read_text().splitlines():
            event = json.loads(line)
            if event is not None:
                events[event["source"]["lsn"]] = event
    for lsn in sorted(events):
        event = events[lsn]
        if event["op"] == "d":
            state.pop(event["before"]["c_custkey"], None)
        else:
            state[event["after"]["c_custkey"]] = {k: str(v) for k, v in event["after"].items()}
    rows = pl.DataFrame(list(state.values()), schema={c: pl.String for c in COMPARED})
    return rows.with_columns(pl.col("c_custkey").cast(pl.Int64), pl.col("c_nationkey").cast(pl.Int64),
                             pl.col("c_acctbal").cast(pl.Float64)).sort("c_custkey")


def silver_customer(lake: Lake) -> pl.DataFrame:
    return pl.read_delta(str(lake.root / "silver/customer")).select(COMPARED).sort("c_custkey")


def history(lake: Lake) -> pl.DataFrame:
    return pl.read_delta(str(lake.root / "silver/customer_history"))


def test_events_applied_in_one_run_equal_sequential_application_and_a_rerun_changes_nothing(
    lake_copy: Callable[[], Lake],
) -> None:
    lake = lake_copy()
    paths = land_events(lake)

    report = lakehouse.run(lake.settings)

    assert report.ok, report.error
    assert silver_customer(lake).equals(oracle(lake, paths))
    current = history(lake).filter(pl.col("is_current")).select(COMPARED).sort("c_custkey")
    assert current.equals(silver_customer(lake))
    # every landed event is counted, and the lag is the age of the newest event's commit time
    applied = [r for r in report.results if r.table == "silver.customer_history"]
    assert applied and applied[0].rows_in == sum(1 for p in paths for line in p.read_text().splitlines()
                                                 if line != "null")
    newest = max(json.loads(line)["source"]["ts_ms"] for p in paths for line in p.read_text().splitlines()
                 if line != "null")
    started = pl.read_delta(str(lake.root / "_meta/runs")).filter(pl.col("run_id") == report.run_id).get_column(
        "started_at").min()
    assert abs(applied[0].lag_seconds - (started.timestamp() - newest / 1000)) < 120  # type: ignore[union-attr]
    # no version ends before it starts (snapshot versions are valid from an unknown time: null)
    rows = history(lake)
    assert rows.filter(pl.col("valid_to") < pl.col("valid_from")).height == 0
    snapshot_rows = rows.filter(pl.col("_lsn") == SNAPSHOT_LSN)
    assert snapshot_rows.height > 0 and snapshot_rows.get_column("valid_from").null_count() == snapshot_rows.height
    before = versions(lake.root)
    assert lakehouse.run(lake.settings).ok
    assert versions(lake.root) == before


def test_files_landing_in_reverse_over_several_runs_give_the_same_state_and_history(
    lake_copy: Callable[[], Lake],
) -> None:
    # given the same events landed all at once in one lake, and file by file in reverse order in another whose
    # history is kept in files of at most 200 rows (each batch reads only the files whose key range may hold a
    # touched key, and rewrites those that do)
    at_once, one_by_one = lake_copy(), lake_copy()
    paths = land_events(at_once)
    assert lakehouse.run(at_once.settings).ok
    staged = one_by_one.raw / "customer_cdc"
    staged.mkdir()
    small_files = dataclasses.replace(one_by_one.settings, target_file_rows=200)
    for path in reversed(paths):
        shutil.copy(path, staged / path.name)
        report = lakehouse.run(small_files)
        assert report.ok, report.error
    assert len(DeltaTable(str(one_by_one.root / "silver/customer_history")).file_uris()) > 5

    # then the current state and every version agree (a late event changes history, not the newest state)
    assert silver_customer(one_by_one).equals(oracle(at_once, paths))
    columns = [*COMPARED, "valid_from", "valid_to", "is_current", "is_deleted", "_lsn", "_end_lsn", "_end_op"]
    events_only = pl.col("_lsn") >= 0
    a = history(at_once).filter(events_only).select(columns).sort("c_custkey", "_lsn")
    b = history(one_by_one).filter(events_only).select(columns).sort("c_custkey", "_lsn")
    assert a.equals(b)
    # validity: per key, versions do not overlap and exactly the open one is current
    for _, group in b.filter(~pl.col("is_deleted")).group_by("c_custkey"):
        rows = group.sort("_lsn").to_dicts()
        assert sum(r["is_current"] for r in rows) <= 1
        for older, newer in itertools.pairwise(rows):
            assert older["valid_to"] is not None and older["valid_to"] <= newer["valid_from"]


def test_malformed_events_are_quarantined_with_the_reason(lake_copy: Callable[[], Lake]) -> None:
    lake = lake_copy()
    good = {"before": None, "after": {"c_custkey": 990001, "c_name": "New", "c_address": "a", "c_nationkey": 1,
                                      "c_phone": "p", "c_acctbal": 1.5, "c_mktsegment": "BUILDING", "c_comment": "c"},
            "source": {"lsn": 5, "ts_ms": 1_700_000_000_000}, "op": "c", "ts_ms": 1_700_000_000_010}
    lines = [
        json.dumps(good),
        json.dumps({**good, "op": "z", "source": {"lsn": 6, "ts_ms": 1}}),
        json.dumps({**good, "op": "u", "after": None, "source": {"lsn": 7, "ts_ms": 1}}),
        '{"op": "c", "after": {broken',
        json.dumps({**good, "source": {"ts_ms": 1}}),
        "null",
    ]
    (lake.raw / "customer_cdc").mkdir()
    (lake.raw / "customer_cdc/bad.ndjson").write_text("\n".join(lines) + "\n")
    before = versions(lake.root)

    # by default a batch with most of its events quarantined fails before anything of the change stage commits
    failed = lakehouse.run(lake.settings)
    assert not failed.ok and "quarantined_share" in str(failed.error) and "3 of 4 rows" in str(failed.error)
    assert {t: v for t, v in versions(lake.root).items() if t.startswith("silver.customer")} == {
        t: v for t, v in before.items() if t.startswith("silver.customer")}
    assert not (lake.root / "quarantine/customer_cdc").exists() or pl.read_delta(
        str(lake.root / "quarantine/customer_cdc")).filter(pl.col("stage") == "silver").height == 0

    report = lakehouse.run(dataclasses.replace(lake.settings, max_quarantined_share=ANY_SHARE))

    assert report.ok, report.error
    held = pl.read_delta(str(lake.root / "quarantine/customer_cdc")).sort("_source_line")
    assert held.select("stage", "check", "_source_line").rows() == [
        ("silver", "unknown_op", 2), ("silver", "missing_after", 3), ("bronze", "malformed_record", 4),
        ("silver", "missing_lsn", 5)]
    assert silver_customer(lake).filter(pl.col("c_custkey") == 990001).height == 1


def test_the_quality_report_samples_the_events_the_change_stage_quarantined(lake_copy: Callable[[], Lake]) -> None:
    from lakehouse import RunContext, quality_report

    # given only events that parse as JSON but are malformed envelopes (quarantined by the change stage, not bronze)
    lake = lake_copy()
    (lake.raw / "customer_cdc").mkdir()
    (lake.raw / "customer_cdc/bad.ndjson").write_text(json.dumps({"op": "z", "source": {"lsn": 1, "ts_ms": 1}}) + "\n")

    report = lakehouse.run(dataclasses.replace(lake.settings, max_quarantined_share=ANY_SHARE))

    # then the report shows the row from quarantine.customer_cdc, where the stage put it
    assert report.ok, report.error
    assert report.result("silver.customer_history").rows_quarantined == 1
    markdown = quality_report(RunContext.start(lake.settings, run_id=report.run_id), report.results)
    assert "Sample of quarantine.customer_cdc:" in markdown
    assert "| silver | unknown_op | op | z | raw/customer_cdc/bad.ndjson | 1 |" in markdown


def test_a_crash_between_the_history_and_the_current_commit_recovers_without_applying_twice(
    lake_copy: Callable[[], Lake], monkeypatch: pytest.MonkeyPatch,
) -> None:
    lake = lake_copy()
    paths = land_events(lake)
    monkeypatch.setenv("LAKEHOUSE_FAILPOINTS", "silver.customer_history:after_commit=raise")
    assert not lakehouse.run(lake.settings).ok
    monkeypatch.delenv("LAKEHOUSE_FAILPOINTS")
    history_version = versions(lake.root)["silver.customer_history"]

    report = lakehouse.run(lake.settings)

    assert report.ok, report.error
    assert versions(lake.root)["silver.customer_history"] == history_version
    assert silver_customer(lake).equals(oracle(lake, paths))


def test_a_full_refresh_rebuilds_the_same_state_and_history(lake_copy: Callable[[], Lake]) -> None:
    lake = lake_copy()
    paths = land_events(lake)
    assert lakehouse.run(lake.settings).ok
    columns = [*COMPARED, "is_current", "is_deleted", "_lsn", "_end_lsn", "_end_op"]
    before = history(lake).filter(pl.col("_lsn") >= 0).select(columns).sort("c_custkey", "_lsn")

    assert lakehouse.run(lake.settings, full_refresh=True).ok

    assert silver_customer(lake).equals(oracle(lake, paths))
    assert history(lake).filter(pl.col("_lsn") >= 0).select(columns).sort("c_custkey", "_lsn").equals(before)


def test_a_batch_that_changes_nothing_leaves_the_table_and_gold_alone(lake_copy: Callable[[], Lake]) -> None:
    # given applied events, and then the same events landed again under another name (a redelivery)
    lake = lake_copy()
    paths = land_events(lake)
    assert lakehouse.run(lake.settings).ok
    shutil.copy(paths[0], paths[0].with_name("redelivered.ndjson"))
    before = versions(lake.root)

    report = lakehouse.run(lake.settings)

    # then silver.customer gets no new version (gold sees no change); the history records the batch as applied
    assert report.ok, report.error
    after = versions(lake.root)
    assert after["silver.customer"] == before["silver.customer"]
    assert after["gold.customer_lifetime_value"] == before["gold.customer_lifetime_value"]
    assert after["silver.customer_history"] == before["silver.customer_history"] + 1
    assert silver_customer(lake).equals(oracle(lake, paths))
    assert lakehouse.run(lake.settings).ok
    assert versions(lake.root) == after


@pytest.mark.parametrize("redelivered", [False, True], ids=["after-changes", "after-a-batch-that-changed-nothing"])
def test_a_full_refresh_that_fails_before_the_changes_are_applied_again_loses_nothing(
    lake_copy: Callable[[], Lake], monkeypatch: pytest.MonkeyPatch, redelivered: bool,
) -> None:
    # given applied events (and, in one case, then a redelivery that changed nothing: the history records that batch
    # as applied), then a full refresh that rebuilds silver.customer from its snapshot and fails right after
    lake = lake_copy()
    paths = land_events(lake)
    assert lakehouse.run(lake.settings).ok
    if redelivered:
        shutil.copy(paths[0], paths[0].with_name("redelivered.ndjson"))
        assert lakehouse.run(lake.settings).ok
    monkeypatch.setenv("LAKEHOUSE_FAILPOINTS", "silver.customer_history:before_commit=raise")
    assert not lakehouse.run(lake.settings, full_refresh=True).ok
    monkeypatch.delenv("LAKEHOUSE_FAILPOINTS")
    assert silver_customer(lake).equals(oracle(lake, []))  # the snapshot alone, for now

    # when a normal run follows
    assert lakehouse.run(lake.settings).ok

    # then every event is applied again (the reset watermark says so, whatever the history recorded before)
    assert silver_customer(lake).equals(oracle(lake, paths))


def test_gold_keeps_the_revenue_of_deleted_customers_and_drops_them_from_lifetime_value(
    lake_copy: Callable[[], Lake],
) -> None:
    # given change events that delete customers who have orders
    lake = lake_copy()
    land_events(lake)

    report = lakehouse.run(lake.settings)

    assert report.ok, report.error
    snapshot = pl.read_csv(lake.raw / "customer/customer.csv", infer_schema=False)
    deleted = set(snapshot.get_column("c_custkey").cast(pl.Int64)) - set(silver_customer(lake).get_column("c_custkey"))
    clv = expected(lake.raw, "customer_lifetime_value")
    assert clv.filter(pl.col("c_custkey").is_in(deleted)).height > 0
    # then revenue per nation is what the raw files give: a deleted customer's orders count under the nation of
    # their last version (the events never move a customer's nation)
    revenue = pl.read_delta(str(lake.root / "gold/revenue_by_nation_month"))
    assert_frames_match(revenue, expected(lake.raw, "revenue_by_nation_month"), SORT["revenue_by_nation_month"])
    # and lifetime value lists current customers only
    assert_frames_match(pl.read_delta(str(lake.root / "gold/customer_lifetime_value")),
                        clv.filter(~pl.col("c_custkey").is_in(deleted)), SORT["customer_lifetime_value"])


def test_a_deleted_customer_s_revenue_counts_under_the_nation_of_their_last_version(
    lake_copy: Callable[[], Lake], tmp_path: Path,
) -> None:
    # given a customer with orders who moves to another nation and is then deleted
    lake = lake_copy()
    snapshot = pl.read_csv(lake.raw / "customer/customer.csv", infer_schema=False)
    buyer = int(pl.read_delta(str(lake.root / "silver/orders")).get_column("o_custkey").min())  # type: ignore[arg-type]
    row = snapshot.filter(pl.col("c_custkey") == str(buyer)).row(0, named=True)
    image = {**row, "c_custkey": buyer, "c_nationkey": int(row["c_nationkey"]), "c_acctbal": float(row["c_acctbal"])}
    moved = {**image, "c_nationkey": (image["c_nationkey"] + 1) % 25}
    events = [
        {"op": "u", "before": image, "after": moved, "source": {"lsn": 10, "ts_ms": 1_700_000_000_000}, "ts_ms": 1},
        {"op": "d", "before": moved, "after": None, "source": {"lsn": 11, "ts_ms": 1_700_000_001_000}, "ts_ms": 2},
    ]
    (lake.raw / "customer_cdc").mkdir()
    (lake.raw / "customer_cdc/move-and-delete.ndjson").write_text(
        "".join(json.dumps(e) + "\n" for e in events) + "null\n")

    report = lakehouse.run(lake.settings)

    # then gold revenue is what the raw files give with the customer in their new nation
    assert report.ok, report.error
    assert silver_customer(lake).filter(pl.col("c_custkey") == buyer).height == 0
    patched = tmp_path / "raw"
    (patched / "customer").mkdir(parents=True)
    for source in ("orders", "lineitem", "nation"):
        (patched / source).symlink_to(lake.raw / source, target_is_directory=True)
    snapshot.with_columns(
        pl.when(pl.col("c_custkey") == str(buyer)).then(pl.lit(str(moved["c_nationkey"])))
        .otherwise(pl.col("c_nationkey")).alias("c_nationkey")
    ).write_csv(patched / "customer/customer.csv")
    moved_away = expected(patched, "revenue_by_nation_month")
    assert not moved_away.equals(expected(lake.raw, "revenue_by_nation_month"))  # (the move changes the figures)
    revenue = pl.read_delta(str(lake.root / "gold/revenue_by_nation_month"))
    assert_frames_match(revenue, moved_away, SORT["revenue_by_nation_month"])

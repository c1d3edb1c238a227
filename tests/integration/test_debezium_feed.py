"""A real feed's forms through the pipeline: files from four converter configurations (JsonConverter wrapped with
precise and with string decimals, plain with doubles, ExtractNewRecordState rows), with snapshot reads, deletes with
tombstones, a primary-key change, a truncate, TOAST placeholders and a logical message, landed out of order and
partly twice. silver.accounts equals applying the changes one by one in LSN order, in one run or a file per run in
reverse (with bronze compacted halfway); every event is in a table, in quarantine or counted as changing no row."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import lakehouse
from lakehouse.running import runner
from lakehouse.settings import Settings
from tests import debezium as feed
from tests.conftest import RAY
from tests.harness import versions

pytestmark = pytest.mark.integration


def lake(tmp_path: Path, name: str = "lake", pipeline: str = "PIPELINE") -> tuple[Path, Settings]:
    root = tmp_path / name
    (root / "raw/accounts").mkdir(parents=True)
    return root, Settings(root=str(root), ray=RAY, pipeline=f"tests.debezium:{pipeline}")


def land(root: Path, files: list[tuple[str, str]]) -> None:
    (root / "raw/accounts_cdc").mkdir(parents=True, exist_ok=True)
    for name, text in files:
        (root / "raw/accounts_cdc" / name).write_text(text)


def silver(root: Path, table: str = "accounts") -> pl.DataFrame:
    return pl.read_delta(str(root / "silver" / table))


def scenario(seed: int = 11) -> tuple[dict[int, dict[str, Any]], list[feed.Change], list[tuple[str, str]]]:
    start = feed.initial(25, seed=seed)
    made = feed.feed(start, 260, seed=seed)
    return start, made, feed.files(made, per_file=30, seed=seed)


def test_a_feed_mixing_every_form_applies_equal_to_one_by_one_application(
    ray_session: None, tmp_path: Path
) -> None:
    start, made, files = scenario()
    root, settings = lake(tmp_path)
    (root / "raw/accounts/export.csv").write_text(feed.snapshot_csv(start))
    land(root, files)
    assert {n.split("-", 2)[2].removesuffix(".ndjson") for n, _ in files} == {
        c.replace("/", "-") for c in feed.CONFIGS}

    report = lakehouse.run(settings)

    assert report.ok, report.error
    wanted = feed.expected_frame(feed.replay(start, made))
    got = silver(root).select(feed.COLUMNS).sort("id")
    assert got.equals(wanted)
    history = silver(root, "accounts_history")
    assert history.filter(pl.col("is_current")).select(feed.COLUMNS).sort("id").equals(wanted)
    assert feed.PLACEHOLDER not in history.get_column("notes").to_list()
    # the truncate closed every version open at its LSN
    truncate = next(c for c in made if c.op == "t")
    closed = history.filter(pl.col("_end_op") == "t")
    assert closed.height > 0 and set(closed.get_column("_end_lsn")) == {truncate.lsn}
    # nothing dropped silently: every landed event is applied, or counted as changing no row; none quarantined
    result = report.result("silver.accounts_history")
    landed = sum(1 for _, text in files for line in text.splitlines() if line != "null")
    assert result.rows_in == landed and result.rows_quarantined == 0
    skipped = sum(1 for _, text in files for line in text.splitlines()
                  if line == '{"schema": null, "payload": null}' or '"op": "m"' in line)
    assert f"{skipped} event(s) that change no row" in result.message
    assert "1 truncate(s) applied" in result.message
    assert not (root / "quarantine/accounts_cdc").exists()

    # a rerun changes nothing
    was = versions(root)
    again = lakehouse.run(settings)
    assert again.ok and versions(root) == was
    assert silver(root).select(feed.COLUMNS).sort("id").equals(wanted)


def test_files_landing_in_reverse_one_per_run_give_the_same_state_and_history(
    ray_session: None, tmp_path: Path
) -> None:
    start, made, files = scenario(seed=12)
    one, settings_one = lake(tmp_path, "one")
    many, settings_many = lake(tmp_path, "many")
    for root in (one, many):
        (root / "raw/accounts/export.csv").write_text(feed.snapshot_csv(start))
    land(one, files)
    assert lakehouse.run(settings_one).ok

    for i, (name, text) in enumerate(reversed(files)):  # the newest first: every older event arrives after newer ones
        land(many, [(name, text)])
        report = lakehouse.run(settings_many)
        assert report.ok, report.error
        if i == len(files) // 2:  # halfway, the bronze files so far compacted into one: the feed goes on from it
            done = {t.table: t for t in runner.maintain(settings_many).tables}["bronze.accounts_cdc"]
            assert (done.outcome, done.files_after) == ("compacted", 1)
            assert lakehouse.run(settings_many).ok  # nothing new since: the compaction brought no event

    wanted = feed.expected_frame(feed.replay(start, made))
    assert silver(many).select(feed.COLUMNS).sort("id").equals(wanted)
    columns = [*feed.COLUMNS, "valid_from", "valid_to", "is_current", "is_deleted", "_op", "_lsn", "_end_lsn",
               "_end_op", "_unavailable"]
    assert silver(many, "accounts_history").select(columns).sort("id", "_lsn").equals(
        silver(one, "accounts_history").select(columns).sort("id", "_lsn"))
    # a full refresh applies every event again, from the compacted file as well
    assert lakehouse.run(settings_many, full_refresh=True).ok
    assert silver(many).select(feed.COLUMNS).sort("id").equals(wanted)
    assert silver(many, "accounts_history").select(columns).sort("id", "_lsn").equals(
        silver(one, "accounts_history").select(columns).sort("id", "_lsn"))


def test_a_truncate_fails_the_run_or_waits_in_quarantine_as_declared(ray_session: None, tmp_path: Path) -> None:
    start, made, files = scenario(seed=13)
    truncate = next(c for c in made if c.op == "t")
    holding = [(n, t) for n, t in files if f'"lsn": {truncate.lsn}' in t]
    root, settings = lake(tmp_path, "fail", "FAIL_ON_TRUNCATE")
    (root / "raw/accounts/export.csv").write_text(feed.snapshot_csv(start))
    land(root, files)
    before = versions(root)

    failed = lakehouse.run(settings)

    assert not failed.ok
    assert f"raw/accounts_cdc/{holding[0][0]}" in str(failed.error) and "truncate" in str(failed.error)
    assert versions(root).get("silver.accounts_history") == before.get("silver.accounts_history")

    # quarantine instead: the truncate is held with its reason and the rest applied
    held = dataclasses.replace(settings, pipeline="tests.debezium:QUARANTINE_TRUNCATE")
    report = lakehouse.run(held)
    assert report.ok, report.error
    quarantined = pl.read_delta(str(root / "quarantine/accounts_cdc"))
    assert quarantined.select("stage", "check").rows() == [("silver", "truncate")]
    assert json.loads(quarantined.get_column("row")[0])["op"] == "t"  # the event as landed
    without = [c for c in made if c.op != "t"]
    assert silver(root).select(feed.COLUMNS).sort("id").equals(feed.expected_frame(feed.replay(start, without)))

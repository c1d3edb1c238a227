"""The events example end to end: NDJSON events partitioned by day, a CSV and a Parquet dimension, three gold tables
equal to DuckDB over the raw files; incremental runs equal a run from scratch, and a late day rewrites exactly that
day's partitions (and, in the unpartitioned user totals, only the files of the users it saw)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest

import lakehouse
from examples.events.demo import generate
from lakehouse.settings import Settings
from lakehouse.storage import Storage
from lakehouse.table import TableRef, snapshot
from tests.conftest import RAY, Lake
from tests.harness import assert_same_lake, contents
from tests.oracle import EVENTS_SORT, assert_frames_match, expected_events

pytestmark = pytest.mark.integration

DAYS = 6
GOLD = tuple(EVENTS_SORT)


@pytest.fixture(scope="session")
def events_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six days of events (300 users, heavy-tailed), landed once per session; copy it before landing more."""
    root = tmp_path_factory.mktemp("events-landed")
    generate(Storage(str(root)), days=DAYS, users=300, events_per_day=1500, products=40, seed=3)
    return root / "raw"


def _settings(root: Path) -> Settings:
    return Settings(root=str(root), ray=RAY, pipeline="events")


@pytest.fixture(scope="session")
def events_lake(ray_session: None, events_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Lake:
    root = tmp_path_factory.mktemp("events-lake")
    shutil.copytree(events_raw, root / "raw")
    settings = _settings(root)
    report = lakehouse.run(settings)
    assert report.ok, report.error
    return Lake(root=root, settings=settings, report=report)


@pytest.mark.parametrize("name", GOLD)
def test_gold_equals_duckdb_over_the_raw_files(events_lake: Lake, name: str) -> None:
    actual = pl.read_delta(str(events_lake.root / "gold" / name))
    assert_frames_match(actual, expected_events(events_lake.raw, name), EVENTS_SORT[name])


def test_silver_events_are_typed_and_partitioned_by_day_and_every_line_is_counted(events_lake: Lake) -> None:
    lines = sum(len(p.read_text().splitlines()) for p in (events_lake.raw / "events").rglob("*.ndjson"))
    events = pl.read_delta(str(events_lake.root / "silver/events"))
    assert events.height == lines
    assert events.schema["ts"] == pl.Datetime("us", "UTC") and events.schema["event_day"] == pl.Date
    assert (events.get_column("ts").dt.date() == events.get_column("event_day")).all()
    snap = snapshot(Storage(str(events_lake.root)), TableRef("silver", "events"))
    assert snap.partition_by == ("event_day",) and len({f.partition_values["event_day"] for f in snap.files}) == DAYS
    s = events_lake.report.result("silver.events")
    assert (s.rows_in, s.rows_written, s.rows_quarantined, s.rows_duplicate) == (lines, lines, 0, 0)


def test_incremental_runs_equal_a_run_from_scratch(
    ray_session: None, events_raw: Path, events_lake: Lake, tmp_path: Path
) -> None:
    # given: the dimensions and the first half of the days, run
    root = tmp_path / "lake"
    days = sorted(p.name for p in (events_raw / "events").iterdir())
    for dim in ("users", "products"):
        shutil.copytree(events_raw / dim, root / "raw" / dim)
    for d in days[: DAYS // 2]:
        shutil.copytree(events_raw / "events" / d, root / "raw/events" / d)
    assert lakehouse.run(_settings(root)).ok
    # when: the other days land, one run each
    reports = []
    for d in days[DAYS // 2:]:
        shutil.copytree(events_raw / "events" / d, root / "raw/events" / d)
        report = lakehouse.run(_settings(root))
        assert report.ok, report.error
        reports.append(report)
    # then: the tables hold what one run over everything gives (bronze differs only in when rows landed)
    got, want = contents(root), contents(events_lake.root)
    keep = [t for t in want if t.startswith(("silver.", "gold."))]
    assert_same_lake({t: got[t] for t in keep}, {t: want[t] for t in keep})
    # and the user totals were merged, not rebuilt: each later run rewrote some of the table's files, not all
    assert all("merged" in r.result("gold.user_totals").message for r in reports)


def _land_late(root: Path, day: str, users: list[int]) -> int:
    """Purchases of ``users`` on ``day``, landed late in a folder of their own; returns how many."""
    lines = [json.dumps({"event_id": f"late-{i}", "ts": f"{day}T10:00:0{i}Z", "user_id": u, "session_id": f"late-{u}",
                         "event_type": "purchase", "product_id": 1, "amount": 10.0 + i})
             for i, u in enumerate(users)]
    (root / "raw/events/late").mkdir(parents=True)
    (root / "raw/events/late/part-0.ndjson").write_text("\n".join(lines) + "\n")
    return len(lines)


def _changes(root: Path, table: str, before: int) -> tuple[set[str | None], set[str | None], int, int]:
    """Partitions whose files the last commit of ``table`` added and removed, and how many files, vs ``before``."""
    storage = Storage(str(root))
    ref = TableRef(*table.split("."))
    old, new = snapshot(storage, ref, version=before), snapshot(storage, ref)
    old_paths, new_paths = {f.path for f in old.files}, {f.path for f in new.files}
    added = [f for f in new.files if f.path not in old_paths]
    removed = [f for f in old.files if f.path not in new_paths]
    part = new.partition_by[0] if new.partition_by else ""
    return ({f.partition_values.get(part) for f in added}, {f.partition_values.get(part) for f in removed},
            len(added), len(removed))


def test_a_late_day_rewrites_exactly_that_days_partitions(ray_session: None, events_raw: Path, tmp_path: Path) -> None:
    # given: a processed lake with small files (user totals in several files of 40 users), and purchases for its
    # second day landed late: a heavy user, a light one, and a user the users table does not know
    root = tmp_path / "lake"
    shutil.copytree(events_raw, root / "raw")
    settings = dataclasses.replace(_settings(root), target_file_rows=40)
    assert lakehouse.run(settings).ok
    day = sorted(p.name for p in (root / "raw/events").iterdir())[1]
    totals = pl.read_delta(str(root / "gold/user_totals"))
    heavy = totals.sort("events", descending=True).get_column("user_id")[0]
    light = totals.sort("events").get_column("user_id")[0]
    storage = Storage(str(root))
    before = {t: snapshot(storage, TableRef(*t.split("."))).version
              for t in ("silver.events", "gold.daily_country", "gold.category_revenue_daily", "gold.user_totals")}
    files = len(snapshot(storage, TableRef("gold", "user_totals")).files)
    landed = _land_late(root, day, [heavy, light, 999_999])

    # when
    report = lakehouse.run(settings)

    # then: silver and the daily gold tables replaced that day's partition and nothing else
    assert report.ok, report.error
    assert report.result("silver.events").rows_written == landed
    for t in ("silver.events", "gold.daily_country", "gold.category_revenue_daily"):
        added, removed, _, _ = _changes(root, t, before[t])
        assert added == removed == {day}, t
    # the user totals merged the keys of that day: the new user inserted, the two others updated (a user of the day
    # whose sum came out a bit different in the last place may count as updated too), only the files holding the
    # changed rows rewritten
    merged = re.search(r"(\d+) inserted, (\d+) updated, (\d+) deleted", report.result("gold.user_totals").message)
    assert merged is not None and merged.group(1) == "1" and int(merged.group(2)) >= 2 and merged.group(3) == "0"
    _, _, n_added, n_removed = _changes(root, "gold.user_totals", before["gold.user_totals"])
    assert files >= 7 and 1 <= n_removed <= 3 < files and n_added >= 1
    # and every gold table still equals DuckDB over all the raw files
    for name in GOLD:
        assert_frames_match(pl.read_delta(str(root / "gold" / name)), expected_events(root / "raw", name),
                            EVENTS_SORT[name])

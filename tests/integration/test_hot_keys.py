"""A user who owns 30% of the events: found, recorded in _meta.hot_keys and the quality report, salted over the final
step's tasks of gold.user_totals, with the result of the unsalted run and of DuckDB over the raw files, also when a
new day is merged in."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

import lakehouse
from examples.events.demo import generate
from lakehouse import RunContext, quality_report
from lakehouse.gold.tasks import Finished
from lakehouse.running.runner import RunReport
from lakehouse.settings import Settings
from lakehouse.storage import Storage
from tests.conftest import RAY, Lake
from tests.oracle import assert_frames_match, expected, expected_events

pytestmark = pytest.mark.integration

EVENTS = 3000  # a day; 4 days, final tasks of 2,000 input rows: 6 tasks


def _land(root: Path, days: int) -> None:
    generate(Storage(str(root)), days=days, users=400, events_per_day=EVENTS, products=30, skew=0.3, seed=5)


def _settings(root: Path, **extra: object) -> Settings:
    return Settings(root=str(root), ray=RAY, pipeline="events", final_task_rows=2_000, **extra)  # type: ignore[arg-type]


def _loads(report: RunReport) -> list[int]:
    [totals] = [r for r in report.results if r.table == "gold.user_totals"]
    return [t.rows for t in totals.tasks if isinstance(t, Finished) and t.bucket >= 0]


def _imbalance(loads: list[int]) -> float:
    return max(loads) / (sum(loads) / len(loads))


def test_a_hot_user_is_found_recorded_salted_and_the_totals_do_not_change(ray_session: None, tmp_path: Path) -> None:
    # given: four days of events, one user with 30% of them (and as many more sessions)
    salted_root, plain_root = tmp_path / "salted", tmp_path / "plain"
    _land(salted_root, days=4)
    shutil.copytree(salted_root / "raw", plain_root / "raw")

    # when: a run with the default salting, and one with salting off
    salted = lakehouse.run(_settings(salted_root))
    plain = lakehouse.run(_settings(plain_root, salts={"user_totals": 0}))

    # then: the totals are DuckDB's over the raw files, and the unsalted run's
    assert salted.ok and plain.ok, (salted.error, plain.error)
    totals = pl.read_delta(str(salted_root / "gold/user_totals"))
    assert_frames_match(totals, expected_events(salted_root / "raw", "user_totals"), ["user_id"])
    assert_frames_match(totals, pl.read_delta(str(plain_root / "gold/user_totals")), ["user_id"])
    # and: the hot user is recorded, salted over several tasks, with the partial rows that reached them
    hot = pl.read_delta(str(salted_root / "_meta/hot_keys")).sort("share", descending=True)
    top = hot.row(0, named=True)
    heaviest = totals.sort("events", descending=True).row(0, named=True)
    assert top["table_name"] == "gold.user_totals" and top["columns"] == "user_id"
    assert top["key"] == f"[{heaviest['user_id']}]"
    assert top["salted"] and top["salts"] > 1 and top["share"] > 0.3
    assert top["final_rows"] > 0 and top["run_id"] == salted.run_id
    assert hot.filter(pl.col("share") <= 0.02).is_empty()
    # and: the final step is balanced where plain hashing is not
    assert len(_loads(salted)) == len(_loads(plain)) == 6
    assert _imbalance(_loads(salted)) <= 1.4 < _imbalance(_loads(plain))
    # and: the unsalted run records why it did not salt; the quality report shows the hot keys
    off = pl.read_delta(str(plain_root / "_meta/hot_keys")).sort("share", descending=True).row(0, named=True)
    assert not off["salted"] and "Settings.salts = 0" in off["note"]
    markdown = quality_report(RunContext.start(_settings(salted_root), run_id=salted.run_id), salted.results)
    assert "## Hot keys" in markdown
    assert f"user_id={heaviest['user_id']}" in markdown and "salted over" in markdown


def test_a_new_day_merged_into_salted_totals_equals_duckdb(ray_session: None, tmp_path: Path) -> None:
    # given: a salted lake of four days
    root = tmp_path / "lake"
    _land(root, days=4)
    assert lakehouse.run(_settings(root)).ok

    # when: a fifth day lands (the hot user in it too) and a run merges the users it saw into the totals
    _land(root, days=5)
    report = lakehouse.run(_settings(root))

    # then: the hot user was salted in the merge run too, and the totals are DuckDB's over every raw file
    assert report.ok, report.error
    [totals] = [r for r in report.results if r.table == "gold.user_totals"]
    assert "updated" in totals.message
    assert any(h.salted for h in totals.hot_keys)
    assert_frames_match(pl.read_delta(str(root / "gold/user_totals")), expected_events(root / "raw", "user_totals"),
                        ["user_id"])


def test_a_lookup_too_large_to_broadcast_is_joined_by_hash_and_salted_keys_get_its_rows(
    lake_copy: Callable[[], Lake]
) -> None:
    """gold.customer_lifetime_value joins customer in its final step: over the broadcast threshold it is split by the
    final task of its key (a hash-partitioned join); with every customer hot and salted over 3 tasks each, their
    customer rows are replicated to each slice's task. The table equals the default build, and after a new drop of
    orders merged in, DuckDB's over the raw files."""
    lake = lake_copy()
    settings = dataclasses.replace(lake.settings, broadcast_max_rows=100, final_task_rows=300,
                                   hot_key_share={"customer_lifetime_value": 0.0001},
                                   salts={"customer_lifetime_value": 3})
    wanted = pl.read_delta(str(lake.root / "gold/customer_lifetime_value"))

    report = lakehouse.run(settings, full_refresh=True)

    assert report.ok, report.error
    [clv] = [r for r in report.results if r.table == "gold.customer_lifetime_value"]
    assert len([t for t in clv.tasks if isinstance(t, Finished) and t.bucket >= 0]) > 1
    assert clv.hot_keys and all(h.salts == 3 for h in clv.hot_keys)
    assert_frames_match(pl.read_delta(str(lake.root / "gold/customer_lifetime_value")), wanted, ["c_custkey"])

    # when: a new drop of orders, for customers old and new, is merged in the same way
    march = pl.read_csv(lake.raw / "orders/1992-03/part-0.csv", infer_schema=False)
    march.head(40).with_columns(pl.col("o_orderkey").cast(pl.Int64) + 9_000_000).write_csv(
        lake.raw / "orders/1992-03/part-9.csv")
    assert lakehouse.run(settings).ok

    # then: it equals DuckDB's over every raw file
    assert_frames_match(pl.read_delta(str(lake.root / "gold/customer_lifetime_value")),
                        expected(lake.raw, "customer_lifetime_value"), ["c_custkey"])

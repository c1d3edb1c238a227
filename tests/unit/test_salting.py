"""Salting hot keys gives the unsalted result: a property test over random skewed inputs, through the engine's own
routing (counts, packing, slices) and the events example's final and merge functions."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.events.pipeline import merge_totals, user_totals
from lakehouse.gold import salting
from lakehouse.gold.tasks import BUCKET, bucket_of

ROUTE = ["user_id"]


def _partials(seed: int, rows: int, hot_share: float, users: int) -> pl.DataFrame:
    """Partial rows as the events example's partial step gives them (per user and session, from several files), one
    user owning ``hot_share`` of them and a Zipf tail; amounts in cents so that sums are exact in any order."""
    import random

    rng = random.Random(seed)
    weights = [1 / (i + 1) ** 1.1 for i in range(users)]
    picked = rng.choices(range(1, users + 1), weights=weights, k=rows)
    picked = [7 if rng.random() < hot_share else u for u in picked]
    start = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    return pl.DataFrame({
        "user_id": picked,
        "session_id": [f"{u}-{rng.randrange(max(1, rows // 40))}" for u in picked],
        "events": [rng.randint(1, 9) for _ in picked],
        "purchases": [rng.randint(0, 2) for _ in picked],
        "spent": [rng.randint(0, 40_000) / 4 for _ in picked],
        "first_seen": [start + dt.timedelta(seconds=rng.randrange(10**6)) for _ in picked],
        "last_seen": [start + dt.timedelta(seconds=10**6 + rng.randrange(10**6)) for _ in picked],
    }, schema_overrides={"user_id": pl.Int64, "events": pl.UInt32, "purchases": pl.UInt32})


def _salted(partials: pl.DataFrame, buckets: int, salt_by: tuple[str, ...]) -> tuple[pl.DataFrame, salting.Routing]:
    """The final step as the engine runs it: route every partial row (placed, salted or hashed), ``final`` per task,
    the salted keys' rows out of each task's output and through ``merge``."""
    counts = partials.group_by(ROUTE).agg(pl.len().cast(pl.Int64).alias(salting.COUNT))
    found = salting.known_keys([salting.KeyCounts(counts, partials.height)],
                               floor=salting.floor_share(salting.HOT_SHARE, buckets))
    _, routing = salting.route_plan(found, ROUTE, name="gold.user_totals", buckets=buckets,
                                    total_rows=partials.height, hot_share=salting.HOT_SHARE, forced=None,
                                    can_salt=True, salt_by=salt_by)
    assert routing is not None
    routed = salting.assign(partials, routing, bucket_of(ROUTE, buckets, partials.schema), BUCKET)
    assert routed.get_column(BUCKET).is_between(0, buckets - 1).all()
    outputs, slices = [], []
    for (_,), rows in routed.partition_by(BUCKET, as_dict=True, include_key=False).items():
        out = user_totals(rows)
        hot = routing.salted(dict(out.schema))
        slices.append(out.join(hot, on=ROUTE, how="semi"))
        outputs.append(out.join(hot, on=ROUTE, how="anti"))
    merged = merge_totals(pl.concat(slices))
    return pl.concat([*outputs, merged.select(outputs[0].columns)]), routing


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), rows=st.integers(200, 6000), hot_share=st.floats(0.0, 0.6),
       users=st.integers(2, 400), buckets=st.sampled_from([2, 3, 8, 16]))
def test_salted_final_step_equals_the_unsalted_one(seed: int, rows: int, hot_share: float, users: int,
                                                   buckets: int) -> None:
    partials = _partials(seed, rows, hot_share, users)

    salted, _ = _salted(partials, buckets, salt_by=("session_id",))

    wanted = user_totals(partials)
    assert salted.sort("user_id").equals(wanted.sort("user_id"))


def test_a_hot_key_is_salted_over_tasks_and_the_load_is_balanced() -> None:
    # given: one user with 40% of the partial rows, spread over 8 final tasks
    partials = _partials(1, 40_000, 0.4, 2000)

    # when
    salted, routing = _salted(partials, 8, salt_by=("session_id",))

    # then: only heavy keys are salted, the hot one among them; every task holds at most 1.4x the mean
    hot = routing.keys.filter(pl.col(salting.SALTED))
    assert 7 in hot.get_column("user_id").to_list()
    assert hot.height <= 3
    loads = salting.assign(partials, routing, bucket_of(ROUTE, 8, partials.schema), BUCKET).group_by(BUCKET).len()
    assert loads.height == 8
    assert loads.get_column("len").max() / loads.get_column("len").mean() <= 1.4  # type: ignore[operator]
    assert salted.sort("user_id").equals(user_totals(partials).sort("user_id"))


def test_a_distinct_count_salted_by_whole_rows_would_count_a_session_twice() -> None:
    """Why ``salt_by`` exists: salting by whole rows cuts a session's rows over slices, whose counts then overlap."""
    partials = _partials(2, 20_000, 0.5, 50)
    salted, _ = _salted(partials, 8, salt_by=())
    hot = salted.filter(pl.col("user_id") == 7).get_column("sessions")[0]
    wanted = user_totals(partials).filter(pl.col("user_id") == 7).get_column("sessions")[0]
    assert hot > wanted


@pytest.mark.parametrize(("share", "buckets", "slices"), [(0.42, 8, 7), (0.42, 16, 14), (0.05, 8, 1), (0.9, 64, 64)])
def test_a_key_is_cut_into_slices_of_about_half_a_task(share: float, buckets: int, slices: int) -> None:
    found = pl.DataFrame({"user_id": [1, 2], salting.COUNT: [int(share * 1000), 10],
                          salting.SAMPLED: [1000, 1000]}, schema_overrides={salting.COUNT: pl.Int64,
                                                                            salting.SAMPLED: pl.Int64})
    hot, routing = salting.route_plan(found, ROUTE, name="gold.t", buckets=buckets, total_rows=10**6,
                                      hot_share=0.02, forced=None, can_salt=True)
    assert routing is not None
    assert len(routing.keys.get_column(salting.BUCKETS)[0]) == slices
    assert [h.values for h in hot] == [(1,)]
    assert hot[0].salted == (slices > 1) and hot[0].rows == int(share * 1000) * 1000


def test_without_merge_hot_keys_are_recorded_and_placed_but_not_salted() -> None:
    found = pl.DataFrame({"user_id": [1], salting.COUNT: [500], salting.SAMPLED: [1000]},
                         schema_overrides={salting.COUNT: pl.Int64, salting.SAMPLED: pl.Int64})
    hot, routing = salting.route_plan(found, ROUTE, name="gold.t", buckets=8, total_rows=1000, hot_share=0.02,
                                      forced=None, can_salt=False, why_not="the plan declares no merge")
    assert routing is not None and not routing.any_salted
    assert hot[0].note == "not salted: the plan declares no merge"
    off, none = salting.route_plan(found, ROUTE, name="gold.t", buckets=8, total_rows=1000, hot_share=0.02,
                                   forced=0, can_salt=True)
    assert none is None and "Settings.salts = 0" in off[0].note


def test_a_lookup_s_rows_go_to_each_task_of_a_salted_key_and_hash_as_the_partial_rows_do() -> None:
    # given: partial rows keyed by a 32-bit column, and a lookup keyed by a 64-bit one
    partials = _partials(3, 10_000, 0.5, 100).with_columns(pl.col("user_id").cast(pl.Int32))
    _, routing = _salted(partials, 8, salt_by=("session_id",))
    users = pl.DataFrame({"user_id": list(range(1, 101)), "country": ["x"] * 100},
                         schema_overrides={"user_id": pl.Int64})

    # when: the lookup is split by final task as the engine splits it
    split = salting.replicate(users, routing, bucket_of(ROUTE, 8, users.schema), BUCKET)
    routed = salting.assign(partials, routing, bucket_of(ROUTE, 8, partials.schema), BUCKET)

    # then: every partial row's task holds its user's lookup row; a salted user's row is in each of its tasks
    pairs = routed.select("user_id", BUCKET).unique().with_columns(pl.col("user_id").cast(pl.Int64))
    assert pairs.join(split, on=["user_id", BUCKET], how="anti").is_empty()
    hot = split.filter(pl.col("user_id") == 7)
    assert hot.height == len(routing.keys.filter(pl.col("user_id") == 7).get_column(salting.BUCKETS)[0].unique()) > 1
    salted = routing.keys.filter(pl.col(salting.SALTED)).get_column("user_id").to_list()
    assert split.filter(~pl.col("user_id").is_in(salted)).get_column("user_id").is_unique().all()


def test_heavy_keys_are_found_from_each_task_s_counts_and_every_row_counted() -> None:
    # given: three count tasks; the second found no heavy key among its 9,000 rows
    counts = [salting.KeyCounts(pl.DataFrame({"user_id": [7, 8], salting.COUNT: [600, 50]}), 1_000),
              salting.KeyCounts(pl.DataFrame(schema={"user_id": pl.Int64, salting.COUNT: pl.Int64}), 9_000),
              salting.KeyCounts(pl.DataFrame({"user_id": [7], salting.COUNT: [400]}), 1_000)]

    # when
    found = salting.known_keys(counts, floor=0.02)

    # then: the shares are of all 11,000 rows: user 7 (1,000 rows) is found, user 8 (50) is below 2%
    assert found.select("user_id", salting.COUNT, salting.SAMPLED).rows() == [(7, 1_000, 11_000)]


def test_the_count_reads_files_taken_evenly_up_to_the_sample_s_rows() -> None:
    from types import SimpleNamespace

    # given: 30 days of 200,000 rows each (6M rows)
    files = [SimpleNamespace(rows=200_000, day=d) for d in range(30)]

    # when
    few = salting.sample(files[:8])
    many = salting.sample(files)

    # then: below the sample's 2M rows every file; above, every third day (2M rows) across the whole range
    assert few == files[:8]
    assert [f.day for f in many] == list(range(0, 30, 3))
    assert sum(f.rows for f in many) == salting.SAMPLE_ROWS

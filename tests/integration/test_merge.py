"""Distributed MERGE against an oracle: random upsert/delete batches (duplicate keys, ties, deletes of unknown keys,
updates that change nothing) merged into a real partitioned Delta table on Ray, compared with a Polars recomputation;
a rerun commits nothing; only affected files are read and only changed ones rewritten; a concurrent commit is refused.
"""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lakehouse import table
from lakehouse.errors import CommitConflict
from lakehouse.storage import Storage
from lakehouse.storage.files import DataFile
from lakehouse.storage.frames import without, write_frame
from lakehouse.table import TableRef
from lakehouse.table.merge import MergeResult, MergeSpec, commit, execute, merge, small

pytestmark = pytest.mark.integration

SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.float64()), ("s", pa.string()), ("_lineage", pa.string()),
                    ("month", pa.date32())])
SOURCE = pa.schema([("k", pa.int64()), ("v", pa.float64()), ("s", pa.string()), ("_lineage", pa.string()),
                    ("seq", pa.int64()), ("del", pa.bool_())])
SPEC = MergeSpec(keys=("k",), order_by=("seq",), delete_column="del", partition="month")
REF = TableRef("silver", "t")
_ids = itertools.count()


def month_of(k: int) -> dt.date:
    return dt.date(1995, 1 + k % 3, 1)  # a key never changes month


def _by_month(df: pl.DataFrame) -> dict[dt.date, pl.DataFrame]:
    df = df.with_columns(pl.col("k").map_elements(month_of, return_dtype=pl.Date).alias("month"))
    return {k[0]: g.drop("month") for k, g in df.partition_by("month", as_dict=True).items()}


def make_target(storage: Storage, rows: pl.DataFrame, files_per_month: int = 1) -> None:
    adds: list[DataFile] = []
    for month, group in _by_month(rows).items():
        size = max(1, -(-group.height // files_per_month))
        adds += write_frame(storage, REF.rel, group.sort("k"), without(SCHEMA, ["month"]),
                            partition_values={"month": month.isoformat()}, prefix="seed", max_rows=size)
    table.commit(storage, table.snapshot(storage, REF), schema=SCHEMA, adds=adds, partition_by=("month",))


def stage(storage: Storage, rows: pl.DataFrame) -> tuple[str, list[DataFile]]:
    """Source rows staged by month, as a run's workers stage them."""
    rel = f"_staging/test-{next(_ids)}"
    files: list[DataFile] = []
    for month, group in _by_month(rows).items():
        files += write_frame(storage, rel, group, SOURCE, partition_values={"month": month.isoformat()},
                             prefix="staged", max_rows=1_000_000)
    return rel, files


def run_merge(storage: Storage, rows: pl.DataFrame, group_rows: int | None = None, batch_rows: int | None = None
              ) -> MergeResult:
    rel, files = stage(storage, rows)
    return merge(storage, table.snapshot(storage, REF), files, rel, SPEC, SCHEMA, run_id=f"r{next(_ids)}",
                 max_rows=1_000_000, group_rows=group_rows, batch_rows=batch_rows)


def oracle(target: pl.DataFrame, source: pl.DataFrame) -> pl.DataFrame:
    """Applying the source to the target in Polars: the last row of a key by seq (then arrival) wins."""
    latest = source.with_row_index("__arrival").sort("seq", "__arrival").unique("k", keep="last")
    deleted = latest.filter(pl.col("del")).select("k")
    upserts = latest.filter(~pl.col("del")).select("k", "v", "s")
    kept = target.join(deleted, on="k", how="anti").join(upserts.select("k"), on="k", how="anti")
    return pl.concat([kept.select("k", "v", "s"), upserts]).sort("k")


def read_target(root: Path) -> pl.DataFrame:
    return pl.read_delta(str(root / "silver/t")).select("k", "v", "s").sort("k")


def target_rows(keys: list[int], v: float = 1.0) -> pl.DataFrame:
    return pl.DataFrame({"k": keys, "v": [v] * len(keys), "s": ["a"] * len(keys), "_lineage": ["seed"] * len(keys)},
                        schema={"k": pl.Int64, "v": pl.Float64, "s": pl.String, "_lineage": pl.String})


def source_rows(rows: list[tuple[int, float, str | None, int, bool]], lineage: str = "new") -> pl.DataFrame:
    return pl.DataFrame(
        {"k": [r[0] for r in rows], "v": [r[1] for r in rows], "s": [r[2] for r in rows],
         "_lineage": [lineage] * len(rows), "seq": [r[3] for r in rows], "del": [r[4] for r in rows]},
        schema={"k": pl.Int64, "v": pl.Float64, "s": pl.String, "_lineage": pl.String, "seq": pl.Int64,
                "del": pl.Boolean},
    )


row = st.tuples(st.integers(0, 24), st.sampled_from([0.0, 1.0, 2.5]), st.sampled_from(["a", "b", None]),
                st.integers(0, 3), st.booleans())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(target_keys=st.sets(st.integers(0, 39), min_size=1, max_size=40), rows=st.lists(row, min_size=1, max_size=25),
       split=st.booleans(), batch_rows=st.sampled_from([None, 1, 2]))
def test_property_a_merge_equals_the_oracle_and_its_rerun_commits_nothing(
    ray_session: None, tmp_path_factory: pytest.TempPathFactory, target_keys: set[int],
    rows: list[tuple[int, float, str | None, int, bool]], split: bool, batch_rows: int | None,
) -> None:
    root = tmp_path_factory.mktemp("merge")
    storage = Storage(str(root))
    make_target(storage, target_rows(sorted(target_keys)), files_per_month=3)
    before = read_target(root)
    source = source_rows(rows)

    # split: every partition with several files is merged by one task per file's key range; batch_rows: files are
    # streamed in batches of 1 or 2 rows (None: the default, one batch here), written from the first change on
    result = run_merge(storage, source, group_rows=1 if split else None, batch_rows=batch_rows)

    assert read_target(root).equals(oracle(before, source))
    counts = result.counts
    assert counts["duplicates"] == len(rows) - source.get_column("k").n_unique()
    assert counts["inserted"] + counts["updated"] + counts["unchanged"] + counts["deleted"] \
        + counts["unmatched_deletes"] == source.get_column("k").n_unique()
    # the same source again changes nothing and makes no new version
    version = table.snapshot(storage, REF).version
    again = run_merge(storage, source, group_rows=1 if split else None, batch_rows=batch_rows)
    assert again.version == version and again.files_rewritten == again.files_added == 0
    assert table.snapshot(storage, REF).version == version


def test_only_affected_files_are_read_and_only_changed_ones_rewritten(
    ray_session: None, tmp_path: Path
) -> None:
    # given 3 months of 4 files each (keys 0..119; key k is in month k % 3, files hold key ranges)
    storage = Storage(str(tmp_path))
    make_target(storage, target_rows(list(range(120))), files_per_month=4)
    files_before = {f.path for f in table.snapshot(storage, REF).files}

    # when one key of month 1 changes, one key of month 2 is sent with its current values, and a new key lands
    # (the files, of 10 rows, streamed 2 rows at a time)
    result = run_merge(storage, source_rows([(3, 9.0, "a", 0, False), (4, 1.0, "a", 0, False),
                                             (1000, 5.0, "z", 0, False)]), batch_rows=2)

    # then month 2 (keys 2, 5, ...) is not read; of months 0 and 1 only the files whose key range holds 3 or 4 are
    # read (1000 is beyond every range); only the file with key 3 is rewritten; key 1000 goes to a new file
    assert result.counts == {"inserted": 1, "updated": 1, "deleted": 0, "unchanged": 1, "duplicates": 0,
                             "unmatched_deletes": 0, "null_keys": 0}
    assert result.partitions == 2 and result.files_read == 2 and result.files_rewritten == 1
    assert result.files_added == 2
    files_after = {f.path for f in table.snapshot(storage, REF).files}
    assert len(files_before - files_after) == 1 and len(files_after - files_before) == 2
    # the rewrite of the unchanged file, begun after two batches without a change, was dropped: no stray file
    on_disk = {str(p.relative_to(tmp_path / "silver/t")) for p in (tmp_path / "silver/t").rglob("*")
               if p.is_file() and "_delta_log" not in p.parts}
    assert on_disk == files_before | files_after
    merged = read_target(tmp_path)
    assert merged.filter(pl.col("k").is_in([3, 4, 1000])).rows() == [(3, 9.0, "a"), (4, 1.0, "a"), (1000, 5.0, "z")]
    assert merged.height == 121


def test_a_commit_made_meanwhile_is_refused_not_overwritten(ray_session: None, tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    make_target(storage, target_rows(list(range(30))))
    planned = table.snapshot(storage, REF)
    rel, files = stage(storage, source_rows([(3, 9.0, "a", 0, False)]))
    # another writer commits first
    run_merge(storage, source_rows([(4, 7.0, "b", 0, False)]))

    with pytest.raises(CommitConflict):
        merge(storage, planned, files, rel, SPEC, SCHEMA, run_id="late", max_rows=1_000_000)
    assert read_target(tmp_path).filter(pl.col("k").is_in([3, 4])).rows() == [(3, 1.0, "a"), (4, 7.0, "b")]


def test_date_keys_prune_by_statistics_and_null_keys_are_counted_not_inserted(
    ray_session: None, tmp_path: Path
) -> None:
    # given an unpartitioned table keyed by a date, in two files (January, February)
    storage = Storage(str(tmp_path))
    ref = TableRef("silver", "daily")
    schema = pa.schema([("day", pa.date32()), ("v", pa.float64())])
    days = pl.DataFrame({"day": [dt.date(2026, 1, d) for d in range(1, 29)] + [dt.date(2026, 2, d) for d in
                                                                               range(1, 29)],
                         "v": [1.0] * 56})
    adds = [f for part in (days.head(28), days.tail(28))
            for f in write_frame(storage, ref.rel, part, schema, prefix="seed", max_rows=100)]
    table.commit(storage, table.snapshot(storage, ref), schema=schema, adds=adds)
    source = pl.DataFrame({"day": [dt.date(2026, 2, 3), None, dt.date(2026, 3, 1)], "v": [9.0, 5.0, 7.0]},
                          schema={"day": pl.Date, "v": pl.Float64})
    staged = write_frame(storage, "_staging/daily", source, schema, prefix="staged", max_rows=100)

    # (the distributed path: an unpartitioned table this small would go to delta-rs)
    target, spec = table.snapshot(storage, ref), MergeSpec(keys=("day",))
    result = execute(storage, target, staged, "_staging/daily", spec, schema, run_id="d", max_rows=100)
    commit(storage, target, result, spec, schema)

    # then only February's file is read and rewritten (with the insert), and the row without a key is counted
    assert (result.files_read, result.files_rewritten) == (1, 1)
    assert (result.counts["updated"], result.counts["inserted"], result.counts["null_keys"]) == (1, 1, 1)
    merged = pl.read_delta(str(tmp_path / "silver/daily")).sort("day")
    assert merged.height == 57 and merged.get_column("day").null_count() == 0
    assert merged.filter(pl.col("v") != 1.0).rows() == [(dt.date(2026, 2, 3), 9.0), (dt.date(2026, 3, 1), 7.0)]


def test_a_large_partition_is_split_by_key_range_and_each_key_is_merged_once(
    ray_session: None, tmp_path: Path
) -> None:
    # given an unpartitioned table of four files: keys 0-9, the even ones of 10-18, the odd ones of 11-19 with 20-25
    # (a range overlapping the one before), 40-49
    storage = Storage(str(tmp_path))
    ranges = [range(10), range(10, 20, 2), [*range(11, 20, 2), *range(20, 26)], range(40, 50)]
    adds = [f for keys in ranges
            for f in write_frame(storage, REF.rel, target_rows(list(keys)), FLAT, prefix="seed", max_rows=100)]
    table.commit(storage, table.snapshot(storage, REF), schema=FLAT, adds=adds)
    target = table.snapshot(storage, REF)
    before = read_target(tmp_path)
    source = pl.concat([
        source_rows([(5, 9.0, "a", 0, False), (22, 9.0, "a", 0, False), (30, 3.0, "n", 0, False),
                     (-1, 3.0, "n", 0, False), (100, 3.0, "n", 0, False), (12, 1.0, "a", 0, False),
                     (5, 8.0, "a", 1, False)]),
        source_rows([(0, 0.0, "x", 0, False)]).with_columns(pl.lit(None, pl.Int64).alias("k")),
    ])
    rel = "_staging/split"
    staged = write_frame(storage, rel, source, SOURCE, prefix="staged", max_rows=100)

    # when merged with tasks of about 10 rows
    result = execute(storage, target, staged, rel, FLAT_SPEC, FLAT, run_id="split", max_rows=100, group_rows=10)
    commit(storage, target, result, FLAT_SPEC, FLAT)

    # then three tasks own [.., 10), [10, 40), [40, ..): the overlapping files stay together; -1 and 30 (in no file's
    # range) are inserted by the tasks whose range holds them, 100 by the last; only the three files whose range holds
    # 5, 12 or 22 are read, the two holding an update rewritten; the keyless row and the duplicate of 5 count once
    assert result.tasks == 3 and result.partitions == 1
    assert result.files_read == 3 and result.files_rewritten == 2 and result.files_added == 3
    assert result.counts == {"inserted": 3, "updated": 2, "deleted": 0, "unchanged": 1, "duplicates": 1,
                             "unmatched_deletes": 0, "null_keys": 1}
    assert read_target(tmp_path).equals(oracle(before, source.filter(pl.col("k").is_not_null())))


FLAT = pa.schema([("k", pa.int64()), ("v", pa.float64()), ("s", pa.string()), ("_lineage", pa.string())])
FLAT_SPEC = MergeSpec(keys=("k",), order_by=("seq",), delete_column="del")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(target_keys=st.sets(st.integers(0, 19), min_size=1, max_size=20), rows=st.lists(row, min_size=1, max_size=25))
def test_property_a_small_unpartitioned_target_merged_by_delta_rs_equals_the_oracle(
    ray_session: None, tmp_path_factory: pytest.TempPathFactory, target_keys: set[int],
    rows: list[tuple[int, float, str | None, int, bool]],
) -> None:
    # an unpartitioned target this small takes the delta-rs path, in one worker task
    root = tmp_path_factory.mktemp("small")
    storage = Storage(str(root))
    seed = write_frame(storage, REF.rel, target_rows(sorted(target_keys)), FLAT, prefix="seed", max_rows=1000)
    table.commit(storage, table.snapshot(storage, REF), schema=FLAT, adds=seed)
    assert small(table.snapshot(storage, REF), FLAT_SPEC)
    before = read_target(root)
    source = source_rows(rows)
    rel = f"_staging/small-{next(_ids)}"
    staged = write_frame(storage, rel, source, SOURCE, prefix="staged", max_rows=1000)

    def once() -> MergeResult:
        return merge(storage, table.snapshot(storage, REF), staged, rel, FLAT_SPEC, FLAT, run_id="s", max_rows=1000)

    result = once()

    assert read_target(root).equals(oracle(before, source))
    assert result.counts["duplicates"] == len(rows) - source.get_column("k").n_unique()
    version = table.snapshot(storage, REF).version
    again = once()  # the same source again: a true no-op, no new version
    assert again.version == version and table.snapshot(storage, REF).version == version

"""The whole pipeline on an S3 root: a real S3-compatible HTTP server (moto) on loopback, real Delta tables on it."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from lakehouse import RaySettings, Settings, run
from lakehouse.ops.query import query
from lakehouse.storage import Storage
from tests.oracle import SORT, assert_frames_match, expected

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_pipeline_on_s3_matches_the_oracle_and_reruns_as_a_no_op(
    ray_session: None, tpch_raw: Path, s3_options: dict[str, str]
) -> None:
    # given: the landed TPC-H files uploaded under s3://lake/tpch/raw
    settings = Settings(root="s3://lake/tpch", storage_options=s3_options, ray=RaySettings(num_cpus=2))
    storage = Storage.from_settings(settings)
    for f in sorted(tpch_raw.rglob("*.csv")):
        storage.write_bytes_atomic(f"raw/{f.relative_to(tpch_raw).as_posix()}", f.read_bytes())

    # when: the pipeline runs on the S3 root
    report = run(settings)

    # then: every table is committed and gold equals the oracle on the same CSV, read back from S3
    assert report.ok, report.error
    # (no change events were landed: their stages have nothing to do)
    assert {r.table for r in report.results if r.status != "committed"} == {"bronze.customer_cdc",
                                                                           "silver.customer_history"}
    for table, keys in SORT.items():
        actual = pl.read_delta(f"s3://lake/tpch/gold/{table}", storage_options=s3_options)
        assert_frames_match(actual, expected(tpch_raw, table), keys)
    counts = query(storage, "SELECT count(*) AS n FROM silver.orders").to_pylist()
    assert counts == [{"n": sum(1 for _ in pl.scan_csv(list(tpch_raw.glob("orders/**/*.csv"))).collect().iter_rows())}]

    # and: a rerun with nothing new commits nothing
    again = run(settings)
    assert [r.status for r in again.results] == ["skipped"] * len(again.results)


def test_a_streamed_merge_on_s3_equals_the_oracle_and_leaves_no_stray_object(
    ray_session: None, s3_options: dict[str, str]
) -> None:
    from lakehouse import table
    from tests.integration.test_merge import REF, make_target, oracle, run_merge, source_rows, target_rows

    # given a partitioned table of 10-row files on S3
    storage = Storage.from_settings(Settings(root="s3://lake/merge", storage_options=s3_options))
    make_target(storage, target_rows(list(range(120))), files_per_month=4)

    def rows() -> pl.DataFrame:
        return pl.read_delta("s3://lake/merge/silver/t", storage_options=s3_options).select("k", "v", "s").sort("k")

    before = rows()
    source = source_rows([(3, 9.0, "a", 0, False), (34, 1.0, "a", 0, False), (7, 0.0, "x", 0, True),
                          (1000, 5.0, "z", 0, False)])

    # when merged streaming 2 rows at a time (the unchanged file's rewrite is begun, then dropped)
    result = run_merge(storage, source, batch_rows=2)

    # then the table is the oracle's, and the bucket holds only files the log has referenced
    assert rows().equals(oracle(before, source))
    assert (result.files_read, result.files_rewritten) == (3, 2)
    log = table.snapshot(storage, REF)
    assert log.version is not None
    referenced = {f.path for v in range(log.version + 1) for f in table.snapshot(storage, REF, version=v).files}
    stored = {e.path.removeprefix("silver/t/") for e in storage.list_files("silver/t")} - {
        e.path.removeprefix("silver/t/") for e in storage.list_files("silver/t/_delta_log")}
    assert stored == referenced

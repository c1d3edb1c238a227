"""The whole pipeline on an S3 root: a real S3-compatible HTTP server (moto) on loopback, real Delta tables on it."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from lakehouse import RaySettings, Settings, run
from lakehouse.query import query
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

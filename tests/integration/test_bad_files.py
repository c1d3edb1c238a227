"""Landed files that cannot be read at all are recorded in ``_meta.rejected_files`` with the reason, the rest of the
batch goes on, a rejected file is not read again until it changes, and the raw files are never touched."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

import lakehouse
from lakehouse import SourceFileError
from tests.conftest import Lake
from tests.harness import versions

pytestmark = pytest.mark.integration

HEADER = ("o_orderkey,o_custkey,o_orderstatus,o_totalprice,o_orderdate,o_orderpriority,o_clerk,o_shippriority,"
          "o_comment\n")
GOOD = HEADER + "9200001,1,O,100.50,1992-02-10,1-URGENT,Clerk#000000001,0,fine\n"
EXPECTED_ERRORS = {
    "raw/orders/bad/empty.csv": "empty file",
    "raw/orders/bad/header.csv": "no data rows (only a header)",
    "raw/orders/bad/junk.csv": "binary data, not UTF-8 text (a NUL byte at offset 5)",
    "raw/orders/bad/quote.csv": "a quoted value opened on line 3 is never closed",
    "raw/orders/bad/truncated.csv.gz": "truncated or corrupt gzip: Compressed file ended before the end-of-stream "
                                       "marker was reached",
    "raw/orders/bad/latin1.ndjson": "not UTF-8 text (byte 0xe9 at offset 29)",
    "raw/orders/bad/broken.parquet": "not a readable Parquet file",
}


def _land_bad(raw: Path) -> None:
    bad = raw / "orders/bad"
    bad.mkdir()
    (bad / "empty.csv").write_bytes(b"")
    (bad / "header.csv").write_text(HEADER)
    (bad / "junk.csv").write_bytes(b"\x89PNG\r\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    (bad / "quote.csv").write_text(GOOD + '9200002,1,O,"100.50,1992-02-10,1-URGENT,Clerk#1,0,open\n9200003,1,O\n')
    (bad / "truncated.csv.gz").write_bytes(gzip.compress(GOOD.encode() * 50)[:60])
    (bad / "latin1.ndjson").write_bytes('{"o_orderkey": "1", "x": "caf\u00e9"}\n'.encode("latin-1"))
    (bad / "broken.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    (raw / "orders/good").mkdir()
    (raw / "orders/good/more.csv.gz").write_bytes(gzip.compress(GOOD.encode()))


def _hashes(raw: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(raw.rglob("*")) if p.is_file()}


def test_unreadable_files_are_recorded_and_the_rest_of_the_batch_is_ingested(lake_copy: Callable[[], Lake]) -> None:
    # given a processed lake, then seven unreadable orders files and one good gzipped file landed
    lake = lake_copy()
    _land_bad(lake.raw)
    raw_before = _hashes(lake.raw)

    # when the pipeline runs
    report = lakehouse.run(lake.settings)

    # then each bad file is recorded once with its reason, size and run; the good file went all the way to silver
    assert report.ok, report.error
    orders = report.result("bronze.orders")
    assert (orders.status, orders.files_in, orders.files_rejected, orders.rows_written) == ("committed", 8, 7, 1)
    assert "rejected 7 unreadable file(s)" in orders.message
    rejected = pl.read_delta(str(lake.root / "_meta/rejected_files"))
    errors = dict(zip(rejected.get_column("path").to_list(), rejected.get_column("error").to_list(), strict=True))
    assert errors.keys() == EXPECTED_ERRORS.keys()
    for path, error in EXPECTED_ERRORS.items():
        assert errors[path].startswith(error), (path, errors[path])
    sizes = dict(zip(rejected.get_column("path").to_list(), rejected.get_column("size").to_list(), strict=True))
    assert sizes == {p: (lake.root / p).stat().st_size for p in EXPECTED_ERRORS}
    assert set(rejected.get_column("run_id").to_list()) == {report.run_id}
    silver = pl.read_delta(str(lake.root / "silver/orders"))
    assert silver.filter(pl.col("o_orderkey") == 9200001).height == 1
    assert silver.filter(pl.col("o_orderkey").is_in([9200002, 9200003])).height == 0
    runs = pl.read_delta(str(lake.root / "_meta/runs")).filter(pl.col("run_id") == report.run_id)
    assert runs.filter(pl.col("table_name") == "bronze.orders").get_column("files_rejected").to_list() == [7]
    assert _hashes(lake.raw) == raw_before  # raw files untouched

    # when the pipeline runs again, the rejected files are not read again
    again = lakehouse.run(lake.settings)
    assert again.result("bronze.orders").status == "skipped"
    assert pl.read_delta(str(lake.root / "_meta/rejected_files")).height == 7

    # when one is corrected in place, the next run ingests it
    fixed = lake.raw / "orders/bad/quote.csv"
    fixed.write_text(HEADER + "9200002,1,O,100.50,1992-02-10,1-URGENT,Clerk#1,0,closed now\n")
    os.utime(fixed, (fixed.stat().st_atime, fixed.stat().st_mtime + 5))
    third = lakehouse.run(lake.settings)
    assert (third.result("bronze.orders").files_in, third.result("bronze.orders").files_rejected) == (1, 0)
    silver = pl.read_delta(str(lake.root / "silver/orders"))
    assert silver.filter(pl.col("o_orderkey") == 9200002).get_column("o_comment").to_list() == ["closed now"]


def test_with_the_fail_policy_a_bad_file_fails_the_run_and_commits_nothing(lake_copy: Callable[[], Lake]) -> None:
    lake = lake_copy()
    (lake.raw / "orders/bad").mkdir()
    (lake.raw / "orders/bad/header.csv").write_text(HEADER)
    (lake.raw / "orders/more.csv").write_text(GOOD)
    before = versions(lake.root)

    report = lakehouse.run(dataclasses.replace(lake.settings, bad_files="fail"))

    assert not report.ok
    assert isinstance(report.error, SourceFileError)
    assert str(report.error) == "bronze.orders (raw/orders/bad/header.csv): no data rows (only a header)"
    assert versions(lake.root) == before
    assert not (lake.root / "_meta/rejected_files").exists()

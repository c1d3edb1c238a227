"""An error raised on a Ray worker reaches the caller as our typed error, with its table, file and column."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lakehouse import SchemaMismatch, Settings, run
from lakehouse.storage import Storage
from lakehouse.table import TableRef, snapshot

pytestmark = pytest.mark.integration


def _land_region_without_comment(root: Path) -> None:
    (root / "raw" / "region").mkdir(parents=True)
    (root / "raw" / "region" / "regions.csv").write_text("r_regionkey,r_name\n0,AFRICA\n1,AMERICA\n")


def test_missing_required_column_fails_the_run_naming_table_file_and_column(
    ray_session: None, settings: Settings
) -> None:
    # given: a landed region file without the model's r_comment column
    root = Path(settings.root)
    _land_region_without_comment(root)

    # when
    report = run(settings)

    # then: the error is ours, raised on a worker, and says where
    assert isinstance(report.error, SchemaMismatch)
    assert report.error.table == "silver.region"
    assert report.error.path == "raw/region/regions.csv"
    assert report.error.column == "r_comment"
    assert "Traceback" not in str(report.error)
    # and: silver.region was never created; the run record says which table failed
    assert not snapshot(Storage(str(root)), TableRef("silver", "region")).exists
    assert report.results[-1].table == "silver.region" and report.results[-1].status == "failed"


def test_cli_exits_nonzero_with_one_clear_message(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    _land_region_without_comment(root)
    env = {"LAKEHOUSE_RAY_CPUS": "2", "LAKEHOUSE_RAY_OBJECT_STORE_BYTES": str(256 << 20),
           "RAY_USAGE_STATS_ENABLED": "0", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "lakehouse.ops.cli", "run", "--root", str(root)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: silver.region (raw/region/regions.csv): required column 'r_comment' is missing "
        "(the model needs r_comment)"
    ]

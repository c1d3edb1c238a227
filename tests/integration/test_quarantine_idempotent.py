"""Quarantine records each rejected row once: across a full refresh, and across a crash between the quarantine
commit and the data table's commit."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import polars as pl
import pytest

from lakehouse import Settings, run
from tests.conftest import ANY_SHARE

pytestmark = pytest.mark.integration

NATIONS = """n_nationkey,n_name,n_regionkey,n_comment
0,ALGERIA,0,fine
1,ARGENTINA,1,fine
2,BRAZIL
3,CANADA,x,region is not an integer
4,EGYPT,4,fine
"""


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A landed file that is mostly bad rows: the default quarantined-share gate is loosened (see ANY_SHARE)."""
    return dataclasses.replace(settings, max_quarantined_share=ANY_SHARE)


def _quarantine(root: Path) -> pl.DataFrame:
    q = pl.read_delta(str(root / "quarantine/nation"))
    return q.select("stage", "check", "column", "_source_file", "_source_line").sort("_source_line")


def _land(settings: Settings) -> Path:
    root = Path(settings.root)
    (root / "raw/nation").mkdir(parents=True)
    (root / "raw/nation/nation.csv").write_text(NATIONS)
    return root


EXPECTED = [
    {"stage": "bronze", "check": "malformed_record", "column": None, "_source_file": "raw/nation/nation.csv",
     "_source_line": 4},
    {"stage": "silver", "check": "dtype('Int64')", "column": "n_regionkey", "_source_file": "raw/nation/nation.csv",
     "_source_line": 5},
]


def test_full_refresh_replaces_silver_rejects_instead_of_repeating_them(ray_session: None, settings: Settings) -> None:
    # given a landed file with one malformed line and one row failing a type check, processed once
    root = _land(settings)
    first = run(settings)
    assert first.ok, first.error
    assert _quarantine(root).to_dicts() == EXPECTED

    # when silver is rebuilt from bronze
    again = run(settings, full_refresh=True)

    # then every reject is still recorded exactly once, and silver holds the three good rows
    assert again.ok, again.error
    assert again.result("silver.nation").rows_quarantined == 1
    assert _quarantine(root).to_dicts() == EXPECTED
    assert pl.read_delta(str(root / "silver/nation")).height == 3


def test_rerun_after_a_crash_between_quarantine_and_data_commits_adds_no_duplicates(
    ray_session: None, settings: Settings
) -> None:
    # given the state a crash leaves right after the quarantine commits: quarantine committed, bronze and silver not
    root = _land(settings)
    assert run(settings).ok
    shutil.rmtree(root / "bronze/nation")
    shutil.rmtree(root / "silver/nation")

    # when the run is repeated
    report = run(settings)

    # then the data tables are rebuilt and each reject is still recorded once
    assert report.ok, report.error
    assert (report.result("bronze.nation").rows_quarantined, report.result("silver.nation").rows_quarantined) == (1, 1)
    assert _quarantine(root).to_dicts() == EXPECTED
    assert pl.read_delta(str(root / "silver/nation")).height == 3

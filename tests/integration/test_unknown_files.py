"""A landed file whose extension names no format is not read, and not silently lost either: the run says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from lakehouse import Settings, run

pytestmark = pytest.mark.integration


def test_files_of_unknown_format_are_reported_and_left_alone(ray_session: None, settings: Settings) -> None:
    # given a nation snapshot and, beside it, a file the engine cannot read
    raw = Path(settings.root) / "raw/nation"
    raw.mkdir(parents=True)
    (raw / "nation.csv").write_text("n_nationkey,n_name,n_regionkey,n_comment\n0,ALGERIA,0,x\n")
    (raw / "README.txt").write_text("delivered by the vendor\n")

    # when
    report = run(settings)

    # then the CSV is ingested, the other file is named in the run record, and it is untouched
    bronze = report.result("bronze.nation")
    assert (bronze.status, bronze.rows_written) == ("committed", 1)
    assert "ignored 1 landed file(s) of unknown format, e.g. raw/nation/README.txt" in bronze.message
    assert (raw / "README.txt").read_text() == "delivered by the vendor\n"

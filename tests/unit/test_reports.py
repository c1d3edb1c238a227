"""Worker reports cross the Ray boundary pickled: every report type survives the round trip, data files included."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from lakehouse.bronze.stage import Ingested, Rejected
from lakehouse.cdc.stage import Parsed, Rewrite
from lakehouse.gold import tasks as gold
from lakehouse.quality.quarantine import Released
from lakehouse.silver import reports
from lakehouse.storage import Storage
from lakehouse.storage.files import DataFile, write_data_file
from lakehouse.table.merge_tasks import CommittedReport, TaskReport


@pytest.fixture
def data_file(tmp_path: Path) -> DataFile:
    storage = Storage(str(tmp_path))
    rows = pa.table({"k": pa.array([1, 2, 3], pa.int64()), "v": pa.array(["a", None, "c"])})
    return write_data_file(storage, "silver/t", rows, prefix="part-test", partition_values={"day": "2024-03-01"})


def _every_report(f: DataFile) -> list[Any]:
    return [
        Ingested("raw/t/a.csv", f, 4, ("k", "v"), quarantined=f),
        Rejected("raw/t/b.csv", 10, 1_700_000_000_000, "empty file"),
        Parsed(3, f, None),
        Rewrite(removed=("part-old.parquet",), added=(f,)),
        Released("part-q.parquet", 2, f),
        TaskReport(2, ("part-old.parquet",), (f,), {"inserted": 1, "updated": 2}),
        CommittedReport({"inserted": 1}, files_read=1, files_removed=0, files_added=1),
        reports.Read(3),
        reports.Finding("warn", "greater_than(0)", "price", 2, "-5.00", "raw/t/a.csv", 7),
        reports.Quarantined(f, late=1),
        reports.Staged(f, keys_only=True),
        reports.Merged((f,), rows_in=3, kept=2, partition="2024-03-01", profile={"rows": 3, "price": {"mean": 1.5}}),
        reports.Profiled("2024-02-01", {"rows": 0}),
        reports.Replayed(2),
        reports.Orphans(2, 10, (7, 9)),
        reports.Rewritten(None, 0, "part-q.parquet"),
        gold.Written(f),
        gold.Staged(3, f),
        gold.Found("1995-03-01"),
        gold.Finished(4, 2_000, 96_000),
        gold.HotRows("[42]", 1_500),
    ]


def test_every_report_survives_pickling_with_its_data_file(data_file: DataFile) -> None:
    # given one report of each kind a worker returns, holding a data file really written
    sent = _every_report(data_file)

    # when they cross the worker boundary as Ray's map_items sends them
    got = pickle.loads(pickle.dumps(sent))

    # then each comes back equal, of its own type, with the file's path, rows and statistics intact
    assert got == sent
    assert [type(r) for r in got] == [type(r) for r in sent]
    assert got[0].file.rows == 3 and got[0].file.partition_values == {"day": "2024-03-01"}
    assert '"numRecords": 3' in got[0].file.stats


def test_a_finding_carries_a_landed_value_as_text_when_it_is_not_a_json_scalar() -> None:
    import datetime as dt

    assert reports.plain(dt.date(2024, 3, 1)) == "2024-03-01"
    assert reports.plain("-5.00") == "-5.00" and reports.plain(7) == 7 and reports.plain(None) is None


def test_a_slice_of_salted_keys_output_rows_survives_pickling() -> None:
    import polars as pl

    rows = pl.DataFrame({"user_id": [7, 7], "events": [3, 4]})
    got = pickle.loads(pickle.dumps(gold.Sliced(rows)))
    assert isinstance(got, gold.Sliced) and got.rows.equals(rows)

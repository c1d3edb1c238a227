"""The sweep deletes exactly the files no version refers to, once they are older than the retention."""

from __future__ import annotations

import os
import time
from pathlib import Path

import polars as pl
import pyarrow as pa

from lakehouse.ops.maintenance import sweep
from lakehouse.storage import Storage
from lakehouse.storage.files import write_data_file
from lakehouse.table import TableRef, commit, orphans, referenced_paths, snapshot

REF = TableRef("silver", "t")
SCHEMA = pa.schema([("k", pa.int64())])
HOUR = 3600.0


def _file(storage: Storage, k: int) -> object:
    return write_data_file(storage, REF.rel, pa.table({"k": [k]}, schema=SCHEMA), prefix=f"part-{k}")


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_sweep_removes_old_unreferenced_files_and_keeps_every_versions_files(tmp_path: Path) -> None:
    # given a table whose version 1 replaced version 0's file, plus files of attempts that never committed
    storage = Storage(str(tmp_path))
    first = _file(storage, 1)
    commit(storage, snapshot(storage, REF), schema=SCHEMA, adds=[first])
    base = snapshot(storage, REF)
    commit(storage, base, schema=SCHEMA, adds=[_file(storage, 2)], removes=list(base.files))
    old_orphan, young_orphan = _file(storage, 3), _file(storage, 4)
    table_dir = tmp_path / REF.rel
    for path in table_dir.glob("*.parquet"):
        _age(path, 2 * HOUR)
    _age(table_dir / young_orphan.path, 60)
    staging = tmp_path / "_staging" / "20200101T000000Z-deadbeef" / "silver"
    staging.mkdir(parents=True)
    (staging / "staged.parquet").write_bytes(b"x")
    _age(staging / "staged.parquet", 2 * HOUR)
    recent = tmp_path / "_staging" / time.strftime("%Y%m%dT%H%M%SZ-00000000", time.gmtime())
    recent.mkdir()

    # when the sweep runs with a one-hour retention
    assert referenced_paths(storage, REF) == {first.path, snapshot(storage, REF).files[0].path}
    dry = sweep(storage, retention_seconds=HOUR, dry_run=True)
    assert dry.files == {"silver.t": [old_orphan.path]} and (table_dir / old_orphan.path).exists()
    done = sweep(storage, retention_seconds=HOUR)

    # then only the old orphan and the old run's staging directory are gone; time travel to version 0 still works
    assert done.files == {"silver.t": [old_orphan.path]} and done.staging == ["20200101T000000Z-deadbeef"]
    assert not (table_dir / old_orphan.path).exists() and (table_dir / young_orphan.path).exists()
    assert not staging.parent.exists() and recent.exists()
    assert pl.read_delta(str(table_dir), version=0).get_column("k").to_list() == [1]
    assert pl.read_delta(str(table_dir)).get_column("k").to_list() == [2]
    assert [o.path for o in orphans(storage, REF, min_age_seconds=0)] == [young_orphan.path]

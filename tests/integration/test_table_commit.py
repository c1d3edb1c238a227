"""Commits go against the version planned from: a writer that lost the race gets CommitConflict, never a blind
retry that would overwrite the other writer's partition."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from lakehouse import CommitConflict
from lakehouse.storage import Storage
from lakehouse.storage.files import write_data_file
from lakehouse.table import TableRef, commit, snapshot, txn_version

pytestmark = pytest.mark.integration

SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.string()), ("month", pa.date32())])
FILE_SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.string())])
REF = TableRef("silver", "t")


def _write(storage: Storage, v: str) -> list:
    data = pa.table({"k": [1, 2], "v": [v, v]}, schema=FILE_SCHEMA)
    return [write_data_file(storage, REF.rel, data, partition_values={"month": "1995-03-01"}, prefix=f"part-{v}")]


def test_two_overwrites_of_one_partition_planned_from_the_same_version(tmp_path: Path) -> None:
    # given a table with one partition
    storage = Storage(str(tmp_path))
    commit(storage, snapshot(storage, REF), schema=SCHEMA, adds=_write(storage, "v0"), partition_by=("month",))
    base = snapshot(storage, REF)

    # when two writers plan from the same version and both replace the partition's files
    first = commit(storage, base, schema=SCHEMA, adds=_write(storage, "a"), removes=list(base.files),
                   app_transactions={"writer-a": 1})
    with pytest.raises(CommitConflict) as info:
        commit(storage, base, schema=SCHEMA, adds=_write(storage, "b"), removes=list(base.files),
               app_transactions={"writer-b": 1})

    # then only the first commit exists; the table holds its rows exactly once and the loser left no trace
    assert first == 1 and snapshot(storage, REF).version == 1
    assert info.value.table == "silver.t" and info.value.retryable
    assert sorted(pl.read_delta(str(tmp_path / REF.rel)).get_column("v").to_list()) == ["a", "a"]
    assert txn_version(storage, REF, "writer-a") == 1 and txn_version(storage, REF, "writer-b") is None

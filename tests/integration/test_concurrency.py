"""Exactly once under concurrency: runs racing on one root end as one run did, and a commit that lost a race is
re-planned from what the winner left, never retried blindly over it."""

from __future__ import annotations

import multiprocessing
import re
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

import lakehouse
from lakehouse import CommitConflict, table
from lakehouse.settings import Settings
from lakehouse.storage import Storage
from lakehouse.storage.files import read_data_file, write_data_file
from lakehouse.storage.frames import to_frame
from lakehouse.table import TableRef, commit, snapshot
from tests.conftest import RAY, Clean
from tests.harness import assert_same_lake, cli_env, contents, start, versions

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_two_runs_started_together_end_as_one_run(
    landed: Path, clean: Clean, tmp_path: Path, ray_address: str
) -> None:
    # when two `lakehouse run` processes start at the same moment on the same root (sharing one Ray)
    procs = [start("run", "--root", str(landed), env=cli_env(tmp_path, ray_address=ray_address)) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]

    # then both succeed, and the tables hold what one run gives, with as many versions as one run makes
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    assert_same_lake(contents(landed), clean.tables)
    assert versions(landed) == clean.versions
    # every stage was done by exactly one of them; the other skipped it, or lost the race and then found it done
    # (a stage that takes long also prints lines of its progress between its start and its end: not those)
    stdout = [o[0] for o in outs]
    progress = re.compile(r"^\S+\s+[a-z ]+: \d+/\d+ \(")
    for name in clean.versions:
        if name.startswith("quarantine."):
            continue
        lines = [line for out in stdout for line in out.splitlines()
                 if line.startswith(f"{name} ") and not progress.match(line)]
        assert sorted(line.split()[1] for line in lines) == ["committed", "skipped", "started", "started"], lines


def test_a_stage_whose_commit_lost_the_race_replans_and_finds_the_work_done(
    ray_session: None, landed: Path, clean: Clean, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a competing run that builds silver.orders between our plan and our commit
    settings = Settings(root=str(landed), ray=RAY)
    real_commit = table.commit
    raced: list[int] = []

    def commit_after_a_competitor(storage: Storage, base: table.Snapshot, **kwargs: Any) -> int:
        if str(base.ref) == "silver.orders" and not raced:
            raced.append(1)
            competitor = lakehouse.RunContext.start(settings)
            assert lakehouse.build_silver(competitor, "orders").status == "committed"
        return real_commit(storage, base, **kwargs)

    monkeypatch.setattr(table, "commit", commit_after_a_competitor)

    # when our run gets to its commit of silver.orders
    report = lakehouse.run(settings)

    # then that commit lost, the stage re-planned and found the work done, and nothing was written twice
    assert report.ok, report.error
    orders = report.result("silver.orders")
    assert orders.status == "skipped"
    assert "already done by a concurrent run after 1 lost commit race(s)" in orders.message
    assert_same_lake(contents(landed), clean.tables)
    assert versions(landed) == clean.versions


# --- the lost-update overwrite (delta-io/delta-rs#3622) -------------------------------------------------------------

SCHEMA = pa.schema([("k", pa.int64()), ("writer", pa.string()), ("month", pa.date32())])
FILE_SCHEMA = pa.schema([("k", pa.int64()), ("writer", pa.string())])
REF = TableRef("silver", "t")
PARTITION = {"month": "1995-03-01"}


def _overwrite_partition_adding(storage: Storage, writer: int, barrier: Any, outcome: Any) -> None:
    """Rewrite the partition with its current rows plus this writer's row; re-plan on a lost race (bounded)."""
    lost = 0
    for attempt in range(8):
        base = snapshot(storage, REF)
        current = [f for f in base.files if f.partition_values == PARTITION]
        rows = pl.concat(
            [to_frame(read_data_file(storage, REF.rel, f.path)) for f in current]
            + [pl.DataFrame({"k": [writer], "writer": [f"w{writer}"]})]
        )
        data = write_data_file(storage, REF.rel, rows.to_arrow().cast(FILE_SCHEMA), partition_values=PARTITION,
                               prefix=f"part-w{writer}")
        if attempt == 0:  # every writer's first commit is planned from the same version
            barrier.wait(timeout=60)
        try:
            commit(storage, base, schema=SCHEMA, adds=[data], removes=current, app_transactions={f"w{writer}": 1})
            outcome.put((writer, lost))
            return
        except CommitConflict:
            lost += 1
    outcome.put((writer, -1))


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    # Local disk only: on S3, delta-rs commits with PUT If-None-Match, and moto (our S3 server in tests) checks the
    # condition and then writes without a lock, so two racing commits can both "win" there; a real S3 does not.
    return Storage(str(tmp_path))


@pytest.mark.slow
def test_concurrent_overwrites_of_one_partition_lose_no_rows(storage: Storage) -> None:
    # given a partition holding one row
    first = write_data_file(storage, REF.rel, pa.table({"k": [0], "writer": ["seed"]}, schema=FILE_SCHEMA),
                            partition_values=PARTITION, prefix="part-seed")
    commit(storage, snapshot(storage, REF), schema=SCHEMA, adds=[first], partition_by=("month",))

    # when four processes overwrite that partition at the same moment, each adding its row
    spawn = multiprocessing.get_context("spawn")
    outcome, barrier = spawn.Queue(), spawn.Barrier(4)
    procs = [spawn.Process(target=_overwrite_partition_adding, args=(storage, w, barrier, outcome))
             for w in range(1, 5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    results = dict(outcome.get(timeout=5) for _ in procs)

    # then each committed once, only one of them on its first try, and the partition holds every row exactly once
    assert all(lost >= 0 for lost in results.values()), results
    assert sorted(results.values())[:2] == [0, 1], results  # one winner per version; the rest re-planned
    rows = pl.read_delta(storage.uri(REF.rel), storage_options=storage.delta_options()).sort("k")
    assert rows.get_column("writer").to_list() == ["seed", "w1", "w2", "w3", "w4"]
    assert snapshot(storage, REF).version == 4

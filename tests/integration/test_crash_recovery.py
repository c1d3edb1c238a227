"""A ``lakehouse run`` killed anywhere leaves every table at a committed version; a plain rerun then brings every
table to exactly what a clean run gives, and the sweep removes what the killed attempts wrote.

The runs are real subprocesses, killed with SIGKILL at fail points (``lakehouse.ops.faults``) on every kind of stage
boundary, and at random moments.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lakehouse.ops import query
from lakehouse.storage import Storage
from lakehouse.table import list_tables, orphans
from tests.conftest import Clean
from tests.harness import LAYERS, assert_same_lake, cli, cli_env, contents, start, versions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# In the order a run reaches them, so each rerun gets past the previous kill and dies at the next one.
KILL_POINTS = [
    "bronze.region:before_commit",  # the first commit of the first table
    "bronze.customer:after_commit",  # between two tables
    "quarantine.orders:after_commit",  # between bronze.orders' quarantine commit and its data commit
    "bronze.lineitem:before_commit",  # workers wrote every file, nothing committed
    "silver.nation:after_commit",  # between bronze and silver being complete
    "silver.orders:before_commit",  # silver.orders' quarantine is committed, its data is not
    "silver.lineitem:after_commit",  # silver is complete, gold is not
    "gold.revenue_by_nation_month:after_commit",  # between two gold tables
    "gold.customer_lifetime_value:before_commit",
    "gold.pricing_summary_monthly:before_commit",  # the last data commit
    "_meta.runs:before_commit",  # every table committed, the run record is not
]
def _table(point: str) -> tuple[str, str]:
    table, _, when = point.rpartition(":")
    return table, when


@pytest.mark.extended
def test_killed_at_every_stage_boundary_a_rerun_gives_the_clean_tables(
    landed: Path, clean: Clean, tmp_path: Path, ray_address: str
) -> None:
    root = landed
    for point in KILL_POINTS:
        # given the lake as the previous killed run left it
        before = versions(root)

        # when a run is killed at the point
        env = cli_env(tmp_path, ray_address=ray_address, LAKEHOUSE_FAILPOINTS=f"{point}=kill")
        done = cli("run", "--root", str(root), env=env)

        # then it died there, and no table shows a partial write: each is readable at a committed version, the table
        # killed before its commit is where it was, the one killed after it is exactly one version further
        assert done.returncode == -signal.SIGKILL, f"{point} not reached:\n{done.stdout}\n{done.stderr}"
        after = versions(root)
        table, when = _table(point)
        expected = before.get(table)
        if when == "after_commit":
            expected = 0 if expected is None else expected + 1
        assert after.get(table) == expected, (point, before.get(table), after.get(table))
        contents(root)  # every committed table reads back
        assert all(after[t] >= v for t, v in before.items() if v is not None), "no table went back"

    # when the pipeline runs again with nothing armed
    done = cli("run", "--root", str(root), env=cli_env(tmp_path, ray_address=ray_address))

    # then every table holds exactly what a clean run gives
    assert done.returncode == 0, done.stderr
    assert_same_lake(contents(root), clean.tables)

    # and the killed attempts' files are there, unreferenced, until the sweep removes them (and nothing else)
    storage = Storage(str(root))
    left = {str(r): orphans(storage, r, min_age_seconds=0) for r in list_tables(storage, LAYERS)}
    assert left["bronze.region"] and left["bronze.lineitem"] and left["silver.orders"]
    assert (root / "_staging").exists() and any((root / "_staging").iterdir())
    swept = cli("sweep", "--root", str(root), "--retention-hours", "0", env=cli_env(tmp_path, ray_address=ray_address))
    assert swept.returncode == 0, swept.stderr
    assert f"removed {sum(len(v) for v in left.values())} files" in swept.stdout
    assert all(not orphans(storage, r, min_age_seconds=0) for r in list_tables(storage, LAYERS))
    assert not any((root / "_staging").iterdir())
    assert_same_lake(contents(root), clean.tables)


@pytest.mark.extended
def test_killed_at_random_moments_a_rerun_gives_the_clean_tables(
    landed: Path, clean: Clean, tmp_path: Path, ray_address: str
) -> None:
    env = cli_env(tmp_path, ray_address=ray_address)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    # how long a whole run takes here, to pick moments inside it
    probe = tmp_path / "probe"
    shutil.copytree(landed, probe)
    began = time.monotonic()
    assert cli("run", "--root", str(probe), env=env).returncode == 0
    whole = time.monotonic() - began
    for attempt in range(3):
        root = tmp_path / f"random-{attempt}"
        shutil.copytree(landed, root)
        at = rng.uniform(0.5, whole)

        # when a run is killed at a random moment, and the pipeline runs again
        proc = start("run", "--root", str(root), env=env)
        try:
            proc.wait(timeout=at)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        contents(root)  # whatever is committed reads back
        done = cli("run", "--root", str(root), env=env)

        # then the tables are exactly those of a clean run
        assert done.returncode == 0, f"seed {seed}, killed at {at:.1f}s: {done.stderr}"
        assert_same_lake(contents(root), clean.tables)


def test_a_worker_that_dies_once_is_retried_and_the_run_completes(landed: Path, clean: Clean, tmp_path: Path) -> None:
    state = tmp_path / "failpoints"
    state.mkdir()
    env = cli_env(tmp_path, LAKEHOUSE_FAILPOINTS="worker:merge_partition=killonce",
                  LAKEHOUSE_FAILPOINTS_STATE=str(state))

    done = cli("run", "--root", str(landed), env=env)

    assert (state / "worker:merge_partition.fired").exists(), "the worker was killed"
    assert done.returncode == 0, done.stderr
    assert_same_lake(contents(landed), clean.tables)


def test_a_worker_that_always_dies_fails_the_table_cleanly(landed: Path, clean: Clean, tmp_path: Path) -> None:
    env = cli_env(tmp_path, LAKEHOUSE_FAILPOINTS="worker:merge_partition=kill")

    done = cli("run", "--root", str(landed), env=env, timeout=600)

    # the run gives up after Ray's bounded retries, naming the table, with nothing of it committed
    assert done.returncode == 1
    assert "error: silver.region: WorkerCrashedError" in done.stderr
    assert "silver.region" not in versions(landed)
    runs = query.query(Storage(str(landed)), "SELECT table_name, status FROM _meta.runs").to_pylist()
    assert {"table_name": "silver.region", "status": "failed"} in runs
    done = cli("run", "--root", str(landed), env=cli_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert_same_lake(contents(landed), clean.tables)


def test_an_error_raised_inside_a_ray_task_fails_only_that_table(landed: Path, clean: Clean, tmp_path: Path) -> None:
    env = cli_env(tmp_path, LAKEHOUSE_FAILPOINTS="worker:partition_task=raise")

    done = cli("run", "--root", str(landed), env=env)

    assert done.returncode == 1
    assert "gold.pricing_summary_monthly: InjectedFault: fail point worker:partition_task was hit" in done.stderr
    assert "gold.pricing_summary_monthly" not in versions(landed)
    assert versions(landed)["gold.customer_lifetime_value"] == 0
    done = cli("run", "--root", str(landed), env=cli_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert_same_lake(contents(landed), clean.tables)

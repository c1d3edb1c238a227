"""Exactly once on S3, as on local disk: two ``lakehouse run`` processes at once on one ``s3://`` root end as one run
did (one commit per table: delta-rs's conditional puts decide every race), and a run killed between its commits is
followed by a rerun that gives the clean tables. A real S3 server (moto) on loopback; the CLI in subprocesses."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from examples.events.demo import generate
from lakehouse.storage import Storage
from tests.harness import assert_same_lake, cli, cli_env, contents, start, upload, versions

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.extended]


def test_racing_runs_and_a_killed_run_on_s3_end_as_one_clean_run(
    s3_options: dict[str, str], tmp_path: Path, ray_address: str
) -> None:
    # given: the same events landed on a local root (run once, cleanly: the reference) and under two S3 prefixes
    raw = tmp_path / "raw"
    generate(Storage(str(raw)), days=3, users=60, events_per_day=300, products=15, seed=9)
    local = tmp_path / "local"
    shutil.copytree(raw / "raw", local / "raw")
    env = cli_env(tmp_path, ray_address=ray_address, **s3_options)
    assert cli("run", "--root", str(local), "--pipeline", "events", env=env).returncode == 0
    wanted, wanted_versions = contents(local), versions(local)
    raced, killed = "s3://lake/raced", "s3://lake/killed"
    upload(raw, raced, s3_options)
    upload(raw, killed, s3_options)

    # when two runs start at the same moment on one S3 root
    procs = [start("run", "--root", raced, "--pipeline", "events", env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]

    # then both succeed, and the tables hold what one run gives, with as many versions as one run makes
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    assert versions(raced, s3_options) == wanted_versions
    assert_same_lake(contents(raced, s3_options), wanted)

    # when a run is killed right after silver.events committed, before gold, then run again
    kill = cli_env(tmp_path, ray_address=ray_address, LAKEHOUSE_FAILPOINTS="silver.events:after_commit=kill",
                   **s3_options)
    died = cli("run", "--root", killed, "--pipeline", "events", env=kill)
    assert died.returncode == -signal.SIGKILL, died.stdout + died.stderr
    halfway = versions(killed, s3_options)
    assert halfway["silver.events"] == 0 and "gold.daily_country" not in halfway
    rerun = cli("run", "--root", killed, "--pipeline", "events", env=env)

    # then the rerun gives the clean tables, silver not written twice
    assert rerun.returncode == 0, rerun.stderr
    assert versions(killed, s3_options) == wanted_versions
    assert_same_lake(contents(killed, s3_options), wanted)

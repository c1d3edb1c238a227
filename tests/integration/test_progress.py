"""``lakehouse run`` says what it does as it does it: a line when each stage starts and ends, written through at
once (a pipe sees the first line while the run goes on); ``--json`` one object per finished stage and one for the
run; ``--quiet`` nothing. The CLI in a subprocess, read through a pipe as a log collector or CI reads it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ENV = {"RAY_USAGE_STATS_ENABLED": "0", "PATH": "/usr/bin:/bin", "LAKEHOUSE_RAY_CPUS": "2",
       "LAKEHOUSE_RAY_OBJECT_STORE_BYTES": str(256 << 20)}
STAGES = ["bronze.events", "bronze.users", "bronze.products", "silver.users", "silver.events", "silver.products",
          "gold.daily_country", "gold.category_revenue_daily", "gold.user_totals"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lakehouse.ops.cli", *args]


@pytest.fixture
def landed(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    done = subprocess.run(_cli("demo-data", "--root", str(root), "--pipeline", "events", "--days", "1", "--users",
                               "20", "--events-per-day", "200"), capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    return root


def test_each_stage_is_printed_as_it_starts_and_ends(landed: Path) -> None:
    # when: a run read line by line through a pipe
    proc = subprocess.Popen(_cli("run", "--root", str(landed), "--pipeline", "events"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    running_after_first_line = proc.poll() is None
    rest, err = proc.communicate(timeout=300)

    # then: the first stage's start came through while the run was still going (Ray had not even started)
    assert proc.returncode == 0, err
    assert first.split() == ["bronze.events", "started"]
    assert running_after_first_line
    # and: every stage in order, its start line then its result line, then the run's end
    lines = [first.rstrip("\n"), *rest.splitlines()]
    assert len(lines) == 2 * len(STAGES) + 1
    for n, table in enumerate(STAGES):
        started, ended = lines[2 * n].split(), lines[2 * n + 1].split()
        assert started == [table, "started"]
        assert ended[0] == table and ended[1] == "committed" and ended[2].startswith("in=")
    assert lines[-1].startswith("run ") and " done in " in lines[-1]


def test_json_gives_an_object_per_stage_and_one_for_the_run_and_quiet_nothing(landed: Path) -> None:
    # when: a first run in JSON, a second one quiet
    first = subprocess.run(_cli("run", "--root", str(landed), "--pipeline", "events", "--json"),
                           capture_output=True, text=True, env=ENV, timeout=300)
    again = subprocess.run(_cli("run", "--root", str(landed), "--pipeline", "events", "--quiet"),
                           capture_output=True, text=True, env=ENV, timeout=300)

    # then: every line is an object: the stages as they finished, with their counts, then the run
    assert first.returncode == 0, first.stderr
    objects = [json.loads(line) for line in first.stdout.splitlines()]
    stages, run = objects[:-1], objects[-1]
    assert [s["table"] for s in stages] == STAGES
    assert all(s["status"] == "committed" and s["version"] == 0 for s in stages)
    assert stages[0]["rows_in"] == stages[0]["rows_written"] == 200
    assert run["ok"] is True and run["error"] is None and run["run_id"]
    # and: quiet prints nothing when all is well
    assert again.returncode == 0 and again.stdout == "" and again.stderr == ""

"""``lakehouse run`` says what it does as it does it: a line when each stage starts and ends, written through at
once (a pipe sees the first line while the run goes on); ``--json`` one object per finished stage and one for the
run; ``--quiet`` nothing. The CLI in a subprocess, read through a pipe as a log collector or CI reads it."""

from __future__ import annotations

import json
import os
import re
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


PROGRESS = re.compile(r"^(?P<table>\S+)\s+(?P<step>[a-z ]+): (?P<done>\d+)/(?P<total>\d+) \((?P<pct>\d+)%\)"
                      r"(, (?P<rows>[\d,]+) rows)?, \d+s$")


def test_each_stage_is_printed_as_it_starts_and_ends_with_its_steps_in_between(landed: Path) -> None:
    # when: a run read line by line through a pipe, a line of progress asked for at every step
    proc = subprocess.Popen(_cli("run", "--root", str(landed), "--pipeline", "events", "--progress-every", "0"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    running_after_first_line = proc.poll() is None
    rest, err = proc.communicate(timeout=300)

    # then: the first stage's start came through while the run was still going (Ray had not even started)
    assert proc.returncode == 0, err
    assert first.split() == ["bronze.events", "started"]
    assert running_after_first_line
    # and: every stage in order, its start line, the progress of its steps, its result line; then the run's end
    lines = [first.rstrip("\n"), *rest.splitlines()]
    steps = {}
    ends = [line for line in lines if not PROGRESS.match(line)]
    assert len(ends) == 2 * len(STAGES) + 1, ends
    at = 0
    for table in STAGES:
        assert lines[at].split() == [table, "started"]
        at += 1
        while found := PROGRESS.match(lines[at]):
            assert found["table"] == table, lines[at]
            assert int(found["pct"]) == 100 * int(found["done"]) // int(found["total"])
            steps[(table, found["step"])] = (int(found["done"]), int(found["total"]),
                                             int((found["rows"] or "0").replace(",", "")))
            at += 1
        ended = lines[at].split()
        assert ended[0] == table and ended[1] == "committed" and ended[2].startswith("in="), lines[at]
        at += 1
    assert lines[at].startswith("run ") and " done in " in lines[at]
    # and: each step's last line says all its items are done, with the rows the stage then reports
    assert steps[("bronze.events", "ingest file")] == (1, 1, 200)
    assert steps[("silver.events", "validate file")] == (1, 1, 200)
    assert all(done == total for done, total, _ in steps.values()), steps


def test_on_a_terminal_the_steps_are_bars_that_go_away_when_the_stage_ends(landed: Path) -> None:
    # when: the run writes to a terminal
    main, other = os.openpty()
    proc = subprocess.Popen(_cli("run", "--root", str(landed), "--pipeline", "events"), stdout=other,
                            stderr=subprocess.PIPE, env={**ENV, "TERM": "xterm", "COLUMNS": "120"})
    os.close(other)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the terminal closed with the run
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""

    # then: the steps were drawn as bars (rich's bar and its cursor moves), and each stage still ends in its line
    text = seen.decode(errors="replace")
    assert "\u2501" in text and "\x1b[" in text and "bronze.events ingest file" in text
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "")
    for table in STAGES:
        assert re.search(rf"^{re.escape(table)}\s+committed in=", plain, re.M), table


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

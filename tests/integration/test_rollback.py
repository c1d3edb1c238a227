"""``lakehouse rollback RUN_ID`` as an operator uses it, in a subprocess, on the events example: every table the run
committed to (bronze, silver, its quarantine, gold) holds what it held before the run, as a new version, with its
watermarks back, and the next run redoes exactly what was undone; a rollback under later runs refuses and names them
(``--cascade`` undoes them too); a rollback killed midway is finished by running it again."""

from __future__ import annotations

import json
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from examples.events.demo import generate
from lakehouse import table
from lakehouse.storage import Storage
from lakehouse.table import TableRef
from tests.harness import LAYERS, assert_same_lake, cli, cli_env, contents, versions

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass(frozen=True)
class Lakes:
    """The same lake after run A (two days of events) and after run B (two more days and a file with bad lines)."""

    after_a: Path
    after_b: Path
    run_a: str
    run_b: str

    def copy(self, to: Path) -> Path:
        shutil.copytree(self.after_b, to)
        return to


def _bad_file(root: Path) -> None:
    """A malformed line (bronze quarantines it) and a negative amount (silver does) among good purchases."""
    good = [{"event_id": f"x-{i}", "ts": "2026-03-04T10:00:00Z", "user_id": i, "session_id": f"x-{i}",
             "event_type": "purchase", "product_id": 1, "amount": 5.0} for i in range(60)]
    bad = {**good[0], "event_id": "x-neg", "amount": -1.0}
    lines = [json.dumps(r) for r in [*good, bad]] + ['{"event_id": "x-cut", "ts": ']
    (root / "raw/events/extra").mkdir(parents=True)
    (root / "raw/events/extra/part-0.ndjson").write_text("\n".join(lines) + "\n")


def _last_run(root: Path) -> str:
    runs = pl.read_delta(str(root / "_meta/runs")).sort("started_at")
    return str(runs.get_column("run_id")[-1])


def _nonempty(root: Path) -> dict[str, pl.DataFrame]:
    """The lake's tables that hold rows (a table the rolled-back run created is left empty)."""
    return {name: frame for name, frame in contents(root).items() if frame.height}


def _watermarks(root: Path) -> dict[str, dict[str, int | None]]:
    """Every watermark of every table, found from the app ids their logs ever set."""
    storage = Storage(str(root))
    found = {}
    for ref in table.list_tables(storage, LAYERS):
        now = table.history(storage, ref)[-1].version
        apps = table.watermarks_changed(storage, ref, None, now)
        found[str(ref)] = {app: table.txn_version(storage, ref, app) for app in apps}
    return found


@pytest.fixture(scope="module")
def lakes(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Lakes:
    raw = tmp_path_factory.mktemp("rollback-raw")
    generate(Storage(str(raw)), days=4, users=200, events_per_day=800, products=30, seed=5)
    a = tmp_path_factory.mktemp("rollback-a")
    shutil.copytree(raw / "raw", a / "raw")
    later = sorted((a / "raw/events").iterdir())[2:]
    for d in later:
        shutil.rmtree(d)
    env = cli_env(a, ray_address=ray_address)
    done = cli("run", "--root", str(a), "--pipeline", "events", env=env)
    assert done.returncode == 0, done.stderr
    b = tmp_path_factory.mktemp("rollback-b") / "lake"
    shutil.copytree(a, b)
    for d in later:
        shutil.copytree(raw / "raw/events" / d.name, b / "raw/events" / d.name)
    _bad_file(b)
    done = cli("run", "--root", str(b), "--pipeline", "events", env=env)
    assert done.returncode == 0, done.stderr
    return Lakes(after_a=a, after_b=b, run_a=_last_run(a), run_b=_last_run(b))


def test_a_rolled_back_run_leaves_the_lake_as_before_it_and_the_next_run_redoes_it(
    lakes: Lakes, tmp_path: Path, ray_address: str
) -> None:
    # given: the lake after run B, which committed to bronze, silver, quarantine and gold
    root = lakes.copy(tmp_path / "lake")
    env = cli_env(tmp_path, ray_address=ray_address)
    before = versions(root)
    quarantined = pl.read_delta(str(root / "quarantine/events"))
    assert quarantined.height == 2 and set(quarantined.get_column("_run_id")) == {lakes.run_b}

    # when the operator looks first, then rolls it back
    dry = cli("rollback", lakes.run_b, "--root", str(root), "--pipeline", "events", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert versions(root) == before, "a dry run changes nothing"
    done = cli("rollback", lakes.run_b, "--root", str(root), "--pipeline", "events", env=env)

    # then every table B committed to holds what it held after A, one version later; the others are untouched
    assert done.returncode == 0, done.stderr
    assert_same_lake(_nonempty(root), contents(lakes.after_a))
    assert pl.read_delta(str(root / "quarantine/events")).height == 0, "B created it: it is emptied"
    was = _watermarks(lakes.after_a)
    for name, marks in _watermarks(root).items():
        assert marks == {app: was.get(name, {}).get(app) for app in marks}, name
    touched = {"bronze.events", "silver.events", "quarantine.events", "gold.daily_country",
               "gold.category_revenue_daily", "gold.user_totals"}
    after = versions(root)
    for name, version in before.items():
        assert after[name] == (version + 1 if name in touched else version), name
        assert name not in touched or (f"restore {name}:" in dry.stdout and f"{name} " in done.stdout)
    # and each restore was said as it happened, and recorded; B's versions are still there to time-travel to
    assert "rolled_back" in done.stdout and "done: 6 tables restored" in done.stdout
    runs = pl.read_delta(str(root / "_meta/runs")).filter(pl.col("status") == "rolled_back")
    assert set(runs.get_column("table_name")) == touched
    assert runs.get_column("message").str.contains(lakes.run_b).all()
    old = pl.read_delta(str(root / "quarantine/events"), version=before["quarantine.events"])
    assert old.height == 2

    # when the pipeline runs again, with the same files landed
    rerun = cli("run", "--root", str(root), "--pipeline", "events", env=env)

    # then it redoes exactly what B did
    assert rerun.returncode == 0, rerun.stderr
    assert_same_lake(contents(root), contents(lakes.after_b))
    # and a second rollback of B has nothing left to do... of the rollback: B's work is back, by another run
    again = cli("rollback", lakes.run_b, "--root", str(root), "--pipeline", "events", env=env)
    assert again.returncode == 0 and "already rolled back" in again.stdout, again.stdout + again.stderr


def test_a_rollback_under_a_later_run_refuses_naming_it_and_cascade_undoes_both(
    lakes: Lakes, tmp_path: Path, ray_address: str
) -> None:
    # given: the lake after runs A and B (B built on every table of A's it touched)
    root = lakes.copy(tmp_path / "lake")
    env = cli_env(tmp_path, ray_address=ray_address)
    before = versions(root)

    # when A alone is rolled back
    refused = cli("rollback", lakes.run_a, "--root", str(root), "--pipeline", "events", env=env)

    # then nothing changes and the error names B and the way out
    assert refused.returncode == 1
    assert lakes.run_b in refused.stderr and "--cascade" in refused.stderr and "gold.user_totals" in refused.stderr
    assert versions(root) == before

    # when the operator asks what cascading would do, then does it
    dry = cli("rollback", lakes.run_a, "--cascade", "--dry-run", "--format", "json", "--root", str(root),
              "--pipeline", "events", env=env)
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert planned["runs"] == sorted([lakes.run_a, lakes.run_b]) and planned["refused"] is None
    assert {s["table"] for s in planned["steps"]} == set(before) and all(
        s["restore_to"] is None for s in planned["steps"])  # A created every table: each is emptied
    assert versions(root) == before
    done = cli("rollback", lakes.run_a, "--cascade", "--root", str(root), "--pipeline", "events", env=env)

    # then every table is empty (its history kept), and the next run rebuilds the lake B left
    assert done.returncode == 0, done.stderr
    storage = Storage(str(root))
    for name in before:
        ref = TableRef.parse(name)
        assert table.to_arrow_dataset(storage, ref).count_rows() == 0, name
        assert all(v is None for v in _watermarks(root)[name].values()), name
    rerun = cli("run", "--root", str(root), "--pipeline", "events", env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert_same_lake(contents(root), contents(lakes.after_b))


def test_a_rollback_killed_midway_is_finished_by_running_it_again(
    lakes: Lakes, tmp_path: Path, ray_address: str
) -> None:
    # given: the lake after run B
    root = lakes.copy(tmp_path / "lake")
    before = versions(root)

    # when the rollback is killed after restoring gold, before silver's restore commits
    kill = cli_env(tmp_path, ray_address=ray_address, LAKEHOUSE_FAILPOINTS="silver.events:before_commit=kill")
    killed = cli("rollback", lakes.run_b, "--root", str(root), "--pipeline", "events", env=kill)

    # then gold is restored and silver and bronze are where B left them
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    mid = versions(root)
    assert all(mid[g] == before[g] + 1 for g in before if g.startswith("gold."))
    assert mid["silver.events"] == before["silver.events"] and mid["bronze.events"] == before["bronze.events"]

    # when it is run again
    env = cli_env(tmp_path, ray_address=ray_address)
    done = cli("rollback", lakes.run_b, "--root", str(root), "--pipeline", "events", env=env)

    # then it restores the rest, leaves gold alone (one restore each), and the lake is as A left it
    assert done.returncode == 0, done.stderr
    assert "3 were already rolled back" in done.stdout, done.stdout
    assert all(versions(root)[g] == before[g] + 1 for g in before if g.startswith("gold."))
    assert_same_lake(_nonempty(root), contents(lakes.after_a))
    rerun = cli("run", "--root", str(root), "--pipeline", "events", env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert_same_lake(contents(root), contents(lakes.after_b))

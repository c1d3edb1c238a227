"""``lakehouse maintain`` on a lake grown batch by batch (a ledger MERGEd on its keys gains a file per batch, the run
records one per run): compaction leaves every row where it was and time travel to before it reads the same, its
commit says dataChange=false, the pipeline goes on from it; a maintenance run and a pipeline run committing at the
same time lose nothing, whichever commits first."""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

import lakehouse
from lakehouse.running import runner
from lakehouse.settings import Settings
from tests.conftest import RAY
from tests.harness import assert_same_lake, cli, cli_env, contents, start, versions

pytestmark = pytest.mark.integration

PIPELINE = "tests.shops:LEDGER"


def land(root: Path, batch: int) -> None:
    """Batch ``batch`` of the ledger: 100 new entries (new keys only: each MERGE adds a file)."""
    lines = ["entry_id,shop_id,amount", *(f"{batch * 100 + j},{j % 5},{j + 0.5}" for j in range(100))]
    (root / "raw/entries").mkdir(parents=True, exist_ok=True)
    (root / f"raw/entries/batch-{batch:03d}.csv").write_text("\n".join(lines) + "\n")


def grown(tmp_path: Path, runs: int = 6) -> tuple[Path, Settings]:
    root = tmp_path / "lake"
    settings = Settings(root=str(root), ray=RAY, pipeline=PIPELINE)
    for batch in range(runs):
        land(root, batch)
        report = lakehouse.run(settings)
        assert report.ok, report.error
    return root, settings


def entries(root: Path) -> pl.DataFrame:
    return pl.read_delta(str(root / "silver/entries")).select("entry_id", "shop_id", "amount").sort("entry_id")


def landed(root: Path) -> pl.DataFrame:
    """The oracle: every landed entry (keys are unique across batches)."""
    rows = pl.concat([pl.read_csv(p) for p in sorted((root / "raw/entries").iterdir())])
    return rows.with_columns(pl.col("amount").cast(pl.Float64)).sort("entry_id")


def files(root: Path, rel: str) -> int:
    return len(DeltaTable(str(root / rel)).file_uris())


def test_compaction_changes_no_row_keeps_time_travel_and_the_pipeline_goes_on(
    ray_session: None, tmp_path: Path
) -> None:
    root, settings = grown(tmp_path)
    before, was = contents(root), versions(root)
    assert files(root, "silver/entries") == 6 and files(root, "_meta/runs") == 6

    report = runner.maintain(settings)

    by_table = {t.table: t for t in report.tables}
    assert (by_table["silver.entries"].outcome, by_table["silver.entries"].files_after) == ("compacted", 1)
    assert (by_table["_meta.runs"].outcome, files(root, "_meta/runs")) == ("compacted", 1)
    assert by_table["bronze.entries"].outcome == "left alone" and files(root, "bronze/entries") == 6
    assert_same_lake(contents(root), before)
    # sorted by the table's keys: the file's key range is the table's
    assert entries(root).equals(pl.read_delta(str(root / "silver/entries")).select(
        "entry_id", "shop_id", "amount"))
    # the commit only rearranged rows
    log = root / "silver/entries/_delta_log" / f"{was['silver.entries'] + 1:020d}.json"
    changes = [a.get("add") or a.get("remove") for a in map(json.loads, log.read_text().splitlines())
               if "add" in a or "remove" in a]
    assert len(changes) == 7 and all(c["dataChange"] is False for c in changes)
    # time travel: the version before maintenance reads the same rows
    old = DeltaTable(str(root / "silver/entries"), version=was["silver.entries"]).to_pyarrow_table()
    assert pl.DataFrame(old).select("entry_id", "shop_id", "amount").sort("entry_id").equals(entries(root))
    # the health record, per table
    health = pl.read_delta(str(root / "_meta/table_health")).filter(pl.col("table") == "silver.entries")
    assert health.select("files", "small_files", "rows", "outcome").rows() == [(1, 1, 600, "compacted")]
    # status tells maintenance from a run that was cut off
    status = cli("status", "--root", str(root), "--pipeline", PIPELINE, "--format", "json",
                 env=cli_env(tmp_path))
    table = next(t for t in json.loads(status.stdout)["tables"] if t["table"] == "silver.entries")
    assert (table["change"], table["unrecorded"]) == ("maintain", False)

    # the pipeline goes on from the compacted tables
    land(root, 6)
    assert lakehouse.run(settings).ok
    assert entries(root).equals(landed(root))
    totals = pl.read_delta(str(root / "gold/shop_totals")).sort("shop_id")
    assert totals.get_column("sales").to_list() == [140] * 5


@pytest.mark.parametrize("first", ["maintenance", "pipeline"])
def test_a_maintenance_and_a_pipeline_run_committing_together_lose_nothing(
    ray_address: str, tmp_path: Path, first: str
) -> None:
    root, settings = grown(tmp_path, runs=4)
    land(root, 4)
    marks = tmp_path / "failpoints"
    marks.mkdir()
    point = "silver.entries:before_commit"
    env = cli_env(tmp_path, ray_address=ray_address, LAKEHOUSE_FAILPOINTS=f"{point}=pauseonce",
                  LAKEHOUSE_FAILPOINTS_STATE=str(marks))
    args = ("--root", str(root), "--pipeline", PIPELINE)
    # the one held between its plan and its commit while the other commits
    held = start("run", *args, env=env) if first == "maintenance" else start("maintain", *args, env=env)
    deadline = time.monotonic() + 120
    while not (marks / f"{point}.fired").exists():
        assert held.poll() is None, held.communicate()
        assert time.monotonic() < deadline, "the held process never reached its commit"
        time.sleep(0.1)

    if first == "maintenance":
        assert {t.table: t.outcome for t in runner.maintain(settings).tables}["silver.entries"] == "compacted"
    else:
        land(root, 5)
        assert lakehouse.run(settings).ok
    (marks / f"{point}.resume").write_text("")
    out, err = held.communicate(timeout=240)

    assert held.returncode == 0, err
    if first == "maintenance":  # the run lost the race to the compaction, and re-planned
        assert "re-planned after 1 lost commit race" in out + err
    else:  # the compaction lost it, and is tried next time
        assert "silver.entries: skipped: a concurrent commit got there first" in out
    assert entries(root).equals(landed(root))
    again = cli("maintain", *args, env=cli_env(tmp_path, ray_address=ray_address))
    assert again.returncode == 0, again.stderr
    assert "silver.entries: compacted" in again.stdout or first == "maintenance"
    assert entries(root).equals(landed(root))

"""``lakehouse maintain`` on a lake grown batch by batch (a ledger MERGEd on its keys gains a file per batch, bronze
one per landed file, the run records one per run): compaction leaves every row where it was and time travel to
before it reads the same, its commit says dataChange=false, the pipeline goes on from it; a compacted bronze table
still knows each landed file it holds, and a silver table that had not caught up reads only its landed files' rows;
a maintenance run and a pipeline run committing at the same time lose nothing, whichever commits first."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

import lakehouse
from lakehouse.running import runner
from lakehouse.running.context import RunContext
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
    assert (by_table["bronze.entries"].outcome, files(root, "bronze/entries")) == ("compacted", 1)
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

    # a bronze version that only compacted brings nothing new: up to date, even where a batch must bring rows
    quiet = lakehouse.run(dataclasses.replace(settings, batch_rows={"entries": (1, None)}))
    assert quiet.ok, quiet.error
    assert quiet.result("silver.entries").message == "up to date"

    # the pipeline goes on from the compacted tables, reading only the new landed file
    land(root, 6)
    after = lakehouse.run(settings)
    assert after.ok
    assert (after.result("bronze.entries").files_in, after.result("silver.entries").rows_in) == (1, 100)
    assert entries(root).equals(landed(root))
    totals = pl.read_delta(str(root / "gold/shop_totals")).sort("shop_id")
    assert totals.get_column("sales").to_list() == [140] * 5


def land_with_a_bad_row(root: Path, batch: int) -> None:
    """Batch ``batch`` with its entry at line 3 (the second data line) not a number: quarantined by silver."""
    land(root, batch)
    path = root / f"raw/entries/batch-{batch:03d}.csv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(f"{batch * 100 + 1},", f"x{batch},", 1)
    path.write_text("\n".join(lines) + "\n")


def numbered(root: Path) -> pl.DataFrame:
    """The oracle of batches with bad rows: every landed entry whose id is a number."""
    rows = pl.concat([pl.read_csv(p, infer_schema=False) for p in sorted((root / "raw/entries").iterdir())])
    rows = rows.filter(pl.col("entry_id").str.contains(r"^\d+$"))
    return rows.select(pl.col("entry_id").cast(pl.Int64), pl.col("shop_id").cast(pl.Int64),
                       pl.col("amount").cast(pl.Float64)).sort("entry_id")


def test_a_compacted_bronze_table_knows_its_landed_files_and_silver_reads_only_the_new_ones(
    ray_session: None, tmp_path: Path
) -> None:
    root, settings = grown(tmp_path, runs=4)
    # two batches with a bad row each reach bronze, but not silver yet (a run stopped after its bronze stage)
    land_with_a_bad_row(root, 4)
    land_with_a_bad_row(root, 5)
    ctx = RunContext.start(settings)
    assert runner.ingest(ctx, "entries").rows_written == 600 - 400
    bronze_rows = pl.read_delta(str(root / "bronze/entries")).drop("_run_id", "_ingested_at").sort(
        "_source_file", "_source_line")
    before = DeltaTable(str(root / "bronze/entries")).version()

    report = runner.maintain(settings)

    done = {t.table: t for t in report.tables}["bronze.entries"]
    assert (done.outcome, done.files_before, done.files_after) == ("compacted", 6, 1)
    index = pl.read_delta(str(root / "_meta/bronze_files"))
    compacted = DeltaTable(str(root / "bronze/entries")).file_uris()
    assert sorted(Path(p).name for p in index.get_column("source_file")) == [f"batch-{b:03d}.csv" for b in range(6)]
    assert set(index.get_column("file")) == {Path(compacted[0]).name}
    # the same rows, sorted by landed file and line; time travel reads the six files' rows
    now = pl.read_delta(str(root / "bronze/entries")).drop("_run_id", "_ingested_at")
    assert now.equals(bronze_rows)
    then = pl.DataFrame(DeltaTable(str(root / "bronze/entries"), version=before).to_pyarrow_table())
    assert then.drop("_run_id", "_ingested_at").sort("_source_file", "_source_line").equals(bronze_rows)

    # the next run ingests nothing again, and silver takes only the two landed files it had not read
    run = lakehouse.run(settings)
    assert run.ok, run.error
    assert run.result("bronze.entries").status == "skipped"
    s = run.result("silver.entries")
    assert (s.rows_in, s.rows_quarantined, s.rows_written) == (200, 2, 198)
    assert entries(root).equals(numbered(root))
    # one quarantine file per landed file, naming its line
    q = DeltaTable(str(root / "quarantine/entries"))
    assert len(q.file_uris()) == 2
    rows = pl.DataFrame(q.to_pyarrow_table()).select("_source_file", "_source_line").sort("_source_file")
    assert [(Path(f).name, line) for f, line in rows.rows()] == [("batch-004.csv", 3), ("batch-005.csv", 3)]
    again = lakehouse.run(settings)
    assert again.ok and {r.status for r in again.results if r.table.startswith(("bronze", "silver"))} == {"skipped"}

    # without the index (removed by hand), the compacted file itself says which landed files it holds
    shutil.rmtree(root / "_meta/bronze_files")
    land(root, 6)
    run = lakehouse.run(settings)
    assert run.ok, run.error
    assert (run.result("bronze.entries").files_in, run.result("silver.entries").rows_in) == (1, 100)
    assert entries(root).equals(numbered(root))

    # a full refresh reads the compacted file whole: the same table, and the rejects again one file per landed file
    table_before = entries(root)
    refresh = lakehouse.run(settings, full_refresh=True)
    assert refresh.ok, refresh.error
    assert entries(root).equals(table_before)
    assert len(DeltaTable(str(root / "quarantine/entries")).file_uris()) == 2
    assert refresh.result("silver.entries").rows_quarantined == 2


@pytest.mark.parametrize(("first", "held_at"), [("maintenance", "silver.entries"), ("pipeline", "silver.entries"),
                                                ("maintenance", "bronze.entries")])
def test_a_maintenance_and_a_pipeline_run_committing_together_lose_nothing(
    ray_address: str, tmp_path: Path, first: str, held_at: str
) -> None:
    root, settings = grown(tmp_path, runs=4)
    land(root, 4)
    marks = tmp_path / "failpoints"
    marks.mkdir()
    point = f"{held_at}:before_commit"
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
        assert {t.table: t.outcome for t in runner.maintain(settings).tables}[held_at] == "compacted"
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
    # every landed row once in bronze (a run re-planned against a compacted bronze takes no file twice)
    assert pl.read_delta(str(root / "bronze/entries")).height == landed(root).height
    again = cli("maintain", *args, env=cli_env(tmp_path, ray_address=ray_address))
    assert again.returncode == 0, again.stderr
    assert "silver.entries: compacted" in again.stdout or first == "maintenance"
    assert entries(root).equals(landed(root))

"""``lakehouse status`` as an operator uses it, in a subprocess, on the events example: a lake where a run was cut off
after its silver commit and before gold's, with a new day landed since. Status says, from the logs alone, what is
waiting to be ingested, which tables the next run changes and why, which run rebuilt each partition and from which
input versions, how fresh each partition is, and which gold partitions are behind their inputs; after the next run,
that everything is complete."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from examples.events.demo import generate
from lakehouse.storage import Storage
from tests.harness import cli, cli_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _status(root: Path, env: dict[str, str]) -> dict:
    done = cli("status", "--root", str(root), "--pipeline", "events", "--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _tables(found: dict) -> dict[str, dict]:
    return {t["table"]: t for t in found["tables"]}


def _partitions(t: dict) -> dict[str, dict]:
    return {p["partition"]: p for p in t["partitions"]}


def _runs(root: Path) -> list[str]:
    return pl.read_delta(str(root / "_meta/runs")).sort("started_at").get_column("run_id").unique(
        maintain_order=True).to_list()


def test_status_tells_what_is_waiting_who_built_each_partition_and_what_is_behind(
    tmp_path: Path, ray_address: str
) -> None:
    # given: two days run by run A; a third day run by B, killed before gold.daily_country commits; a fourth landed
    raw = tmp_path / "all"
    generate(Storage(str(raw)), days=4, users=150, events_per_day=600, products=20, seed=11)
    root = tmp_path / "lake"
    shutil.copytree(raw / "raw", root / "raw")
    days = sorted(p.name for p in (root / "raw/events").iterdir())
    for d in days[2:]:
        shutil.rmtree(root / "raw/events" / d)
    env = cli_env(tmp_path, ray_address=ray_address)
    assert cli("run", "--root", str(root), "--pipeline", "events", env=env).returncode == 0
    run_a = _runs(root)[-1]
    shutil.copytree(raw / "raw/events" / days[2], root / "raw/events" / days[2])
    kill = cli_env(tmp_path, ray_address=ray_address, LAKEHOUSE_FAILPOINTS="gold.daily_country:before_commit=kill")
    killed = cli("run", "--root", str(root), "--pipeline", "events", env=kill)
    assert killed.returncode != 0
    shutil.copytree(raw / "raw/events" / days[3], root / "raw/events" / days[3])
    landed = root / "raw/events" / days[3] / "part-0.ndjson"
    os.utime(landed, (1_700_000_000, 1_700_000_000))  # landed long ago: it has waited since then

    # when the operator asks for the status
    found = _status(root, env)
    tables = _tables(found)

    # then the day landed since is waiting, with when it landed
    events = next(s for s in found["sources"] if s["source"] == "events")
    assert events["pending_files"] == 1 and events["pending_bytes"] == landed.stat().st_size
    assert events["oldest_pending"] == "2023-11-14T22:13:20Z" and events["waiting_seconds"] > 86400 * 365
    assert tables["bronze.events"]["next_run"] == "ingest 1 file(s)" and tables["bronze.events"]["behind"]
    # and silver holds B's work, committed by a run with no record yet (it was killed); sizes are the log's
    silver = tables["silver.events"]
    run_b = silver["changed_by"]
    assert run_b != run_a and silver["unrecorded"] and silver["last_run"]["run_id"] == run_a
    data = pl.read_delta(str(root / "silver/events"))
    assert silver["rows"] == data.height and silver["version"] == 1
    live = DeltaTable(str(root / "silver/events")).file_uris()
    assert silver["bytes"] == sum(Path(u.removeprefix("file://")).stat().st_size for u in live)
    assert silver["files"] == len(live)
    # and each silver partition says how fresh it is and which run rebuilt it from which bronze version
    parts = _partitions(silver)
    newest = data.group_by("event_day").agg(pl.col("ts").max(), pl.len())
    assert set(parts) == {str(d) for d in newest.get_column("event_day")}
    for day, ts, rows in newest.iter_rows():
        p = parts[str(day)]
        assert p["rows"] == rows
        shown = dt.datetime.fromisoformat(p["newest"].replace("Z", "+00:00"))  # to the second, from a max rounded up
        assert 0 <= (shown - ts.replace(microsecond=0)).total_seconds() <= 1, (day, p["newest"], ts)
        assert (p["rebuilt_by"], p["built_from"]) in [(run_a, {"bronze.events": 0}), (run_b, {"bronze.events": 1})]
    assert parts[days[2]]["rebuilt_by"] == run_b and parts[days[0]]["rebuilt_by"] == run_a
    assert silver["newest"] == max(p["newest"] for p in parts.values())
    # and gold's partitions that B's silver commit changed are behind, the new day not built yet, the rest complete
    gold = tables["gold.daily_country"]
    assert gold["behind"] and gold["next_run"].startswith("rebuild") and gold["changed_by"] == run_a
    g = _partitions(gold)
    changed = {d for d, p in parts.items() if p["rebuilt_by"] == run_b}
    assert {d for d, p in g.items() if p["behind"]} == changed
    assert "not built yet" in g[days[2]]["behind"] and g[days[2]]["files"] == 0
    for d, p in g.items():
        assert p["behind"] or (p["rebuilt_by"] == run_a and p["built_from"]["silver.events"] == 0), d
    # and the text says it in a line per partition
    text = cli("status", "--root", str(root), "--pipeline", "events", "--partitions", "all", env=env)
    assert text.returncode == 0, text.stderr
    assert "1 file(s)" in text.stdout and "cut off before its end" in text.stdout
    assert f"{days[2]}   not built yet" in text.stdout and "behind: the next run rebuilds it" in text.stdout

    # when the next run has run
    rerun = cli("run", "--root", str(root), "--pipeline", "events", env=env)
    assert rerun.returncode == 0, rerun.stderr
    run_c = _runs(root)[-1]
    after = _tables(_status(root, env))

    # then nothing is waiting or behind, every gold partition is complete, and the new day was rebuilt by C
    assert not any(t["behind"] or t["upstream"] for t in after.values())
    assert all(p["behind"] is None for t in after.values() for p in t["partitions"])
    assert _partitions(after["silver.events"])[days[3]]["rebuilt_by"] == run_c
    assert _partitions(after["gold.daily_country"])[days[3]]["rebuilt_by"] == run_c
    assert after["silver.events"]["last_run"]["run_id"] == run_c and not after["silver.events"]["unrecorded"]
    assert after["gold.user_totals"]["partitions"] == []  # unpartitioned


def test_status_names_a_table_that_is_not_there(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    done = cli("status", "--root", str(tmp_path / "lake"), "--pipeline", "events", "--table", "gold.nope", env=env)
    assert done.returncode == 1 and "no table gold.nope" in done.stderr and "silver.events" in done.stderr

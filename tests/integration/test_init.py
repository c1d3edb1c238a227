"""``lakehouse init`` as a new user runs it: a project written, then ``demo-data``, ``plan`` and ``run`` from inside
it (real subprocesses, the project's own lakehouse.toml), gold equal to DuckDB over the landed files; and the
README's tutorial on the empty skeleton."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

from tests.harness import cli, cli_env
from tests.oracle import EVENTS_SORT, SORT, assert_frames_match, expected, expected_events

pytestmark = pytest.mark.integration


def _ok(done: object) -> str:
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"  # type: ignore[attr-defined]
    return done.stdout  # type: ignore[attr-defined,no-any-return]


def test_init_events_then_demo_data_plan_and_run(tmp_path: Path, ray_address: str) -> None:
    env = cli_env(tmp_path, ray_address=ray_address)
    project = tmp_path / "web"
    _ok(cli("init", str(project), "--example", "events", env=env))
    for rel in ("lakehouse.toml", "pipelines/events.py", "schemas/events.py", "prefect.yaml", "medallion_flow.py"):
        assert (project / rel).is_file(), rel
    assert "from lakehouse import" in (project / "pipelines/events.py").read_text()

    _ok(cli("demo-data", "--days", "3", "--users", "150", "--events-per-day", "400", env=env, cwd=project))
    plan = json.loads(_ok(cli("plan", "--format", "json", env=env, cwd=project)))
    assert plan[0] == {"table": "bronze.events", "action": "ingest 3 file(s)", "work": [
        f"raw/events/2026-03-0{d}/part-0.ndjson" for d in (1, 2, 3)], "why": plan[0]["why"]}
    assert [p["table"] for p in plan][-3:] == ["gold.daily_country", "gold.category_revenue_daily", "gold.user_totals"]

    _ok(cli("run", env=env, cwd=project))
    raw = project / "lakehouse-data/raw"
    for name, keys in EVENTS_SORT.items():
        got = pl.read_delta(str(project / "lakehouse-data/gold" / name))
        assert_frames_match(got, expected_events(raw, name), keys)
    # a rerun has nothing to do: every stage skipped, nothing committed
    again = _ok(cli("run", env=env, cwd=project))
    assert "committed" not in again
    assert "nothing new" in _ok(cli("plan", env=env, cwd=project))


@pytest.mark.slow
def test_init_tpch_then_demo_data_and_run(tmp_path: Path, ray_address: str) -> None:
    env = cli_env(tmp_path, ray_address=ray_address)
    project = tmp_path / "tpch"
    _ok(cli("init", str(project), "--example", "tpch", env=env))
    _ok(cli("demo-data", "--scale-factor", "0.01", "--months", "3", env=env, cwd=project))
    _ok(cli("run", env=env, cwd=project))
    raw = project / "lakehouse-data/raw"
    for name, keys in SORT.items():
        assert_frames_match(pl.read_delta(str(project / "lakehouse-data/gold" / name)), expected(raw, name), keys)


def test_the_readme_tutorial_on_the_empty_skeleton(tmp_path: Path, ray_address: str) -> None:
    env = cli_env(tmp_path, ray_address=ray_address)
    project = tmp_path / "shop"
    _ok(cli("init", str(project), "--example", "empty", env=env))
    drop = project / "lakehouse-data/raw/orders/2026-11-30"
    drop.mkdir(parents=True)
    (drop / "part-0.csv").write_text("order_id,customer,ordered_on,amount\n1,ada,2026-11-30,12.50\n"
                                     "2,bob,2026-11-30,7.25\n")
    _ok(cli("run", env=env, cwd=project))
    out = _ok(cli("query", "--format", "json", "SELECT * FROM gold.daily_revenue", env=env, cwd=project))
    assert [json.loads(line) for line in out.splitlines()] == [{"order_day": "2026-11-30", "orders": 2,
                                                                "revenue": 19.75}]
    # init never overwrites a project
    again = cli("init", str(project), "--example", "empty", env=env)
    assert again.returncode == 1 and "lakehouse.toml already exists" in again.stderr

    # the tutorial's next step, its code taken from the README as it stands: a second source and a gold table
    models, pipeline = _readme_blocks()
    with (project / "schemas/empty.py").open("a") as f:
        f.write("\n\n" + models)
    with (project / "pipelines/empty.py").open("a") as f:
        f.write("\n\n" + pipeline)
    (project / "lakehouse-data/raw/customers").mkdir()
    (project / "lakehouse-data/raw/customers/customers.csv").write_text("customer,country\nada,FR\n")
    out = _ok(cli("run", env=env, cwd=project))
    assert "gold.revenue_by_country" in out and "gold.daily_revenue" in out
    out = _ok(cli("query", "--format", "json", "SELECT country, revenue FROM gold.revenue_by_country ORDER BY 1",
                  env=env, cwd=project))
    assert [json.loads(line) for line in out.splitlines()] == [{"country": "FR", "revenue": 12.5},
                                                                {"country": None, "revenue": 7.25}]


def _readme_blocks() -> list[str]:
    """The Python code blocks of the README's "Your own data" section, in order."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text[text.index("## Your own data"):]
    section = section[:section.index("\n## ", 5)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)

"""A table's quarantined-share gate: above its threshold the run fails before the table (or anything built from it)
commits, naming the table and the check; every evaluated check is a row of ``_meta.checks``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

import lakehouse
from lakehouse import QualityGateFailed, RunContext, quality_report
from tests.conftest import Lake
from tests.harness import versions

pytestmark = pytest.mark.integration

HEADER = ("o_orderkey,o_custkey,o_orderstatus,o_totalprice,o_orderdate,o_orderpriority,o_clerk,o_shippriority,"
          "o_comment\n")
DROP = HEADER + "".join(
    f"{9400000 + i},1,O,{'-1.00' if i < 2 else '10.00'},1992-02-10,1-URGENT,Clerk#000000001,0,x\n" for i in range(8)
)  # 8 rows, 2 with a negative price: 25% of the batch is quarantined


def _checks(lake: Lake, run_id: str) -> list[dict]:
    rows = pl.read_delta(str(lake.root / "_meta/checks")).filter(pl.col("run_id") == run_id)
    return rows.select("table_name", "check", "observed", "threshold", "action", "passed").to_dicts()


def test_a_batch_above_the_threshold_fails_the_run_before_any_commit(lake_copy: Callable[[], Lake]) -> None:
    # given a lake whose orders may quarantine at most 10% of a batch, and a drop with 25% bad rows
    lake = lake_copy()
    settings = dataclasses.replace(lake.settings, max_quarantined_share={"orders": 0.10})
    (lake.raw / "orders/drop").mkdir()
    (lake.raw / "orders/drop/part-0.csv").write_text(DROP)
    before = versions(lake.root)

    # when the pipeline runs
    report = lakehouse.run(settings)

    # then it fails at silver.orders naming the check, and neither silver.orders, its quarantine nor gold committed
    assert isinstance(report.error, QualityGateFailed)
    # naming the most frequent reason with a landed example, its file and line
    assert str(report.error) == ("silver.orders: quality check quarantined_share failed: 2 of 8 rows quarantined "
                                 "(25.00%), above the maximum of 10.00%; most often greater_than_or_equal_to(0) on "
                                 "column o_totalprice (2 rows), e.g. value '-1.00' in raw/orders/drop/part-0.csv "
                                 "line 2")
    after = versions(lake.root)
    assert after["bronze.orders"] == before["bronze.orders"] + 1  # bronze took the file as it landed
    for name in ("silver.orders", "silver.lineitem", "gold.revenue_by_nation_month"):
        assert after.get(name) == before.get(name), name
    assert "quarantine.orders" not in after or after["quarantine.orders"] == before.get("quarantine.orders")
    recorded = {c["check"]: c for c in _checks(lake, report.run_id)}
    assert recorded["quarantined_share"] == {"table_name": "silver.orders", "check": "quarantined_share",
                                             "observed": 0.25, "threshold": 0.1, "action": "fail", "passed": False}
    # the checks evaluated with it are recorded too, all of the table (its model's orphan and drift checks)
    assert {c["table_name"] for c in recorded.values()} == {"silver.orders"}
    assert {"references(o_custkey -> customer.c_custkey)", "drift_rows", "drift_mean"} <= set(recorded)

    # and with a threshold the batch meets, the same data goes through and the passed check is recorded
    report = lakehouse.run(dataclasses.replace(settings, max_quarantined_share={"*": 0.30}))
    assert report.ok, report.error
    assert report.result("silver.orders").rows_quarantined == 2
    found = {(r["table_name"], r["check"]): r for r in _checks(lake, report.run_id)}
    share = found["silver.orders", "quarantined_share"]
    assert share["passed"] and share["observed"] == 0.25
    # tables with no new batch (the rest were skipped) have nothing to check
    assert {t for t, _ in found} == {"silver.orders"}

    # the Prefect quality report says the same in markdown
    markdown = quality_report(RunContext.start(settings, run_id=report.run_id), report.results)
    assert "| silver.orders | quarantined_share | 0.25 | 0.3 | fail | passed |" in markdown
    assert "| silver.orders | 8 | 2 | 0 |" in markdown


def test_with_nothing_declared_a_mostly_bad_drop_fails_and_one_setting_loosens_it(
    lake_copy: Callable[[], Lake], tmp_path: Path, ray_address: str
) -> None:
    # given: TPC-H declares no quarantined share for orders; a drop of 8 orders, 2 of them invalid (25%)
    from tests.harness import cli, cli_env

    lake = lake_copy()
    (lake.raw / "orders/drop").mkdir()
    (lake.raw / "orders/drop/part-0.csv").write_text(DROP)
    before = versions(lake.root)

    # when it runs as a user runs it, then it fails at the default 5%, naming the table, the share and the reason
    done = cli("run", "--root", str(lake.root), env=cli_env(tmp_path, ray_address=ray_address))
    assert done.returncode == 1
    assert ("silver.orders: quality check quarantined_share failed: 2 of 8 rows quarantined (25.00%), above the "
            "maximum of 5.00%; most often greater_than_or_equal_to(0) on column o_totalprice") in done.stderr
    assert versions(lake.root)["silver.orders"] == before["silver.orders"]

    # and one setting for that table lets the same batch through, its bad rows to quarantine
    env = cli_env(tmp_path, ray_address=ray_address, LAKEHOUSE_MAX_QUARANTINED_SHARE="orders=0.3")
    done = cli("run", "--root", str(lake.root), env=env)
    assert done.returncode == 0, done.stderr
    assert versions(lake.root)["silver.orders"] == before["silver.orders"] + 1

"""``quarantine replay``: after a rule is fixed, quarantined rows that now pass move into silver (and on to gold)
exactly once; the rest stay in quarantine."""

# No "from __future__ import annotations": the fixed model below is shipped to Ray workers by value, and its
# annotations must be types there, not names of this module.
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pandera.polars as pa
import polars as pl
import pytest

import examples.tpch.pipeline
import lakehouse
from tests.conftest import ANY_SHARE, BAD_ORDERS, Lake
from tests.harness import versions

pytestmark = pytest.mark.integration


@pytest.fixture
def lake_copy(lake_copy: Callable[[], Lake]) -> Callable[[], Lake]:
    """Copies of the processed lake with the default quarantined-share gate loosened (see ANY_SHARE): the drops
    here are mostly bad rows, which is what a replay is for."""

    def make() -> Lake:
        lake = lake_copy()
        return dataclasses.replace(lake, settings=dataclasses.replace(lake.settings, max_quarantined_share=ANY_SHARE))

    return make


def _relax_orders(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fix: credit notes (negative order totals) are valid orders now."""
    from schemas.tpch import MAX_AMOUNT, Orders

    class CreditNotesAllowed(Orders):  # defined here so Ray ships it by value
        o_totalprice: pl.Float64 = pa.Field(gt=-MAX_AMOUNT, lt=MAX_AMOUNT)

    pipeline = examples.tpch.pipeline.PIPELINE
    silver = tuple(dataclasses.replace(s, model=CreditNotesAllowed) if s.name == "orders" else s
                   for s in pipeline.silver)
    monkeypatch.setattr(examples.tpch.pipeline, "PIPELINE", dataclasses.replace(pipeline, silver=silver))


def _with_bad_orders(lake_copy: Callable[[], Lake]) -> Lake:
    """A processed lake plus BAD_ORDERS landed and run: lines 3 (bronze) and 4 (silver) quarantined."""
    lake = lake_copy()
    (lake.raw / "orders/drop").mkdir()
    (lake.raw / "orders/drop/bad.csv").write_text(BAD_ORDERS)
    assert lakehouse.run(lake.settings).ok
    return lake


def _quarantined(lake: Lake) -> pl.DataFrame:
    return pl.read_delta(str(lake.root / "quarantine/orders")).select("stage", "check", "_source_file", "_source_line")


def _clv(lake: Lake, customer: int) -> float:
    gold = pl.read_delta(str(lake.root / "gold/customer_lifetime_value"))
    return float(gold.filter(pl.col("c_custkey") == customer).get_column("total_spent")[0])


def test_rows_that_pass_a_fixed_rule_move_to_silver_and_gold_once(
    lake_copy: Callable[[], Lake], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a run that quarantined a line it could not parse (bronze, line 3), a negative-price order (silver,
    # line 4) and an order with an unknown status (silver, line 5)
    lake = lake_copy()
    cust = pl.read_delta(str(lake.root / "gold/customer_lifetime_value")).get_column("c_custkey").min()
    (lake.raw / "orders/drop").mkdir()
    bad = BAD_ORDERS.replace("\n9000003,1,O,-5.00", f"\n9000003,{cust},O,-5.00")
    bad += f"9000004,{cust},Z,10.00,1992-02-11,1-URGENT,Clerk#1,0,bad status\n"
    (lake.raw / "orders/drop/bad.csv").write_text(bad)
    assert lakehouse.run(lake.settings).ok
    assert sorted(_quarantined(lake).get_column("_source_line").to_list()) == [3, 4, 5]
    clv_before = _clv(lake, cust)
    before = versions(lake.root)

    # when the rule is fixed and the table's quarantine replayed
    _relax_orders(monkeypatch)
    report = lakehouse.replay(lake.settings, "orders")

    # then the order that passes now is in silver with its landed lineage, gold counts it, and quarantine keeps the
    # unparseable line and the row that still fails
    assert report.ok, report.error
    replayed = report.result("silver.orders")
    assert (replayed.status, replayed.rows_in, replayed.rows_written) == ("committed", 2, 1)
    assert "replayed 1 of 2 quarantined rows; 1 still fail" in replayed.message
    row = pl.read_delta(str(lake.root / "silver/orders")).filter(pl.col("o_orderkey") == 9000003)
    assert row.select("o_totalprice", "_source_file", "_source_line").to_dicts() == [
        {"o_totalprice": -5.0, "_source_file": "raw/orders/drop/bad.csv", "_source_line": 4}
    ]
    assert sorted(_quarantined(lake).select("stage", "_source_line").rows()) == [("bronze", 3), ("silver", 5)]
    assert _clv(lake, cust) == pytest.approx(clv_before - 5.0)
    after = versions(lake.root)
    assert after["silver.orders"] == before["silver.orders"] + 1
    assert after["quarantine.orders"] == before["quarantine.orders"] + 1
    assert after["bronze.orders"] == before["bronze.orders"]

    # and a second replay finds nothing to do and commits nothing
    again = lakehouse.replay(lake.settings, "orders")
    assert again.ok and again.result("silver.orders").status == "skipped"
    assert versions(lake.root) == after


def test_a_replay_stopped_between_its_two_commits_finishes_without_merging_twice(
    lake_copy: Callable[[], Lake], monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = _with_bad_orders(lake_copy)
    _relax_orders(monkeypatch)
    before = versions(lake.root)

    # when the replay fails after its silver commit, before its quarantine commit
    monkeypatch.setenv("LAKEHOUSE_FAILPOINTS", "quarantine.orders:before_commit=raise")
    report = lakehouse.replay(lake.settings, "orders")
    assert str(report.error) == "silver.orders: InjectedFault: fail point quarantine.orders:before_commit was hit"
    assert versions(lake.root)["silver.orders"] == before["silver.orders"] + 1
    assert 4 in _quarantined(lake).get_column("_source_line").to_list()  # in both for now: never in neither

    # then a rerun only finishes the quarantine's part: silver gets no new version and holds the row once
    monkeypatch.delenv("LAKEHOUSE_FAILPOINTS")
    report = lakehouse.replay(lake.settings, "orders")
    assert report.ok, report.error
    assert "silver already had them" in report.result("silver.orders").message
    after = versions(lake.root)
    assert after["silver.orders"] == before["silver.orders"] + 1
    silver = pl.read_delta(str(lake.root / "silver/orders"))
    assert silver.filter(pl.col("o_orderkey") == 9000003).height == 1
    assert _quarantined(lake).select("stage", "_source_line").rows() == [("bronze", 3)]


def test_replay_of_an_unknown_table_names_the_known_ones(tpch_lake: Lake) -> None:
    with pytest.raises(lakehouse.ConfigError, match=r"no silver table 'order' in pipeline tpch \(known: .*orders.*\)"):
        lakehouse.replay(tpch_lake.settings, "order")  # refused before anything is read or written


def test_the_cli_replays_and_says_when_nothing_passes_yet(
    lake_copy: Callable[[], Lake], tmp_path: Path, ray_address: str
) -> None:
    # given a lake with a quarantined negative-price order and the rule not fixed
    from tests.harness import cli, cli_env

    lake = _with_bad_orders(lake_copy)
    before = versions(lake.root)

    done = cli("quarantine", "replay", "--table", "orders", "--root", str(lake.root),
               env=cli_env(tmp_path, ray_address=ray_address, LAKEHOUSE_MAX_QUARANTINED_SHARE="*=1"))

    assert done.returncode == 0, done.stderr
    assert "re-validated 1 quarantined rows: none passes now" in done.stdout
    assert versions(lake.root) == before


def test_a_replay_finished_after_a_normal_run_in_between_still_merges_once(
    lake_copy: Callable[[], Lake], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a replay that stopped after its silver commit, and then a normal run that quarantined more rows
    lake = _with_bad_orders(lake_copy)
    _relax_orders(monkeypatch)
    monkeypatch.setenv("LAKEHOUSE_FAILPOINTS", "quarantine.orders:before_commit=raise")
    assert not lakehouse.replay(lake.settings, "orders").ok
    monkeypatch.delenv("LAKEHOUSE_FAILPOINTS")
    (lake.raw / "orders/drop/more.csv").write_text(BAD_ORDERS.splitlines()[0] + "\n"
                                                   + "9000010,1,X,1.00,1992-03-01,1-URGENT,Clerk#1,0,bad status\n")
    assert lakehouse.run(lake.settings).ok
    before = versions(lake.root)

    # when the replay is rerun
    report = lakehouse.replay(lake.settings, "orders")

    # then it only finishes the stopped one: no new silver version, the replayed row left quarantine, the new
    # rejects are still there
    assert report.ok, report.error
    assert "silver already had them" in report.result("silver.orders").message
    assert versions(lake.root)["silver.orders"] == before["silver.orders"]
    lines = sorted(_quarantined(lake).select("_source_file", "_source_line").rows())
    assert lines == [("raw/orders/drop/bad.csv", 3), ("raw/orders/drop/more.csv", 2)]
    # and the next replay has nothing that passes
    again = lakehouse.replay(lake.settings, "orders")
    assert again.ok and again.result("silver.orders").status == "skipped"


def test_a_replayed_row_older_than_the_lookback_waits_for_a_backfill(
    lake_copy: Callable[[], Lake], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a negative-price order of 1992-02 quarantined, and a lookback that closes months before 1992-07
    lake = lake_copy()
    settings = dataclasses.replace(lake.settings, lookback={"orders": 1, "lineitem": 6})
    (lake.raw / "orders/drop").mkdir()
    (lake.raw / "orders/drop/bad.csv").write_text(BAD_ORDERS)
    assert lakehouse.run(settings).ok
    _relax_orders(monkeypatch)

    # when its rule is fixed and it is replayed
    report = lakehouse.replay(settings, "orders")

    # then it passes the rule but is late: it stays in quarantine as late, silver does not have it
    assert report.ok, report.error
    assert report.result("silver.orders").message.startswith("replayed 0 of 1 quarantined rows; 1 still fail")
    held = pl.read_delta(str(lake.root / "quarantine/orders")).filter(pl.col("_source_line") == 4)
    assert held.get_column("check").to_list() == ["late_arrival(before 1992-07)"]
    silver = pl.read_delta(str(lake.root / "silver/orders"))
    assert silver.filter(pl.col("o_orderkey") == 9000003).height == 0

    # and a backfill of its month takes it in and releases it
    assert lakehouse.backfill(settings, "1992-02", "1992-02").ok
    silver = pl.read_delta(str(lake.root / "silver/orders"))
    assert silver.filter(pl.col("o_orderkey") == 9000003).get_column("o_totalprice").to_list() == [-5.0]
    assert 4 not in pl.read_delta(str(lake.root / "quarantine/orders")).get_column("_source_line").to_list()

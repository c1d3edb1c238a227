"""Independent stages at once (``parallel_stages``, or a cluster with the CPUs for it): the same tables and versions
as one stage at a time, and a failure stops the run as it does in order: nothing after it starts, what ran is
reported, and a rerun ends clean."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import lakehouse
from lakehouse.running.runner import Stage, parallelism, pipeline_of
from lakehouse.settings import Settings
from tests.conftest import RAY, Clean
from tests.harness import assert_same_lake, contents, versions

pytestmark = pytest.mark.integration


def test_stages_at_once_leave_the_tables_one_at_a_time_leaves(landed: Path, clean: Clean) -> None:
    report = lakehouse.run(Settings(root=str(landed), ray=RAY, parallel_stages=3))

    assert report.ok, report.error
    assert_same_lake(contents(landed), clean.tables)
    assert versions(landed) == clean.versions
    # independent stages overlapped, and no stage began before every stage it depends on had ended
    spans = {r.table: (r.started_at, r.ended_at) for r in report.results}
    assert all(end is not None for _, end in spans.values())
    overlaps = [(a, b) for a in spans for b in spans
                if a < b and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]]
    assert overlaps, spans
    deps = pipeline_of(Settings(root=str(landed))).dependencies()
    tables = {(layer, name): Stage(layer, name, None).table for layer, name in deps}  # type: ignore[arg-type]
    waited = [(tables[stage], tables[dep]) for stage, before in deps.items() for dep in before]
    assert ("silver.lineitem", "silver.orders") in waited  # its references gate checks orders
    for table, dep in waited:
        assert spans[table][0] >= spans[dep][1], (table, dep, spans[table], spans[dep])

def test_a_failure_among_stages_at_once_starts_nothing_after_it_and_the_rerun_is_clean(
    landed: Path, clean: Clean, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(root=str(landed), ray=RAY, parallel_stages=2)
    monkeypatch.setenv("LAKEHOUSE_FAILPOINTS", "bronze.nation:before_commit=raise")

    report = lakehouse.run(settings)

    assert not report.ok and report.error is not None
    assert report.error.context.get("table") == "bronze.nation", report.error
    failed = [r for r in report.results if r.status == "failed"]
    assert [r.table for r in failed] == ["bronze.nation"]
    # the stages that ran were bronze ones (those running beside the failed one finished and committed); no silver or
    # gold stage started after it
    assert {r.table.split(".")[0] for r in report.results} == {"bronze"}
    assert all(r.status in ("committed", "failed") for r in report.results), report.results
    monkeypatch.delenv("LAKEHOUSE_FAILPOINTS")

    assert lakehouse.run(dataclasses.replace(settings, parallel_stages=0)).ok
    assert_same_lake(contents(landed), clean.tables)


def test_auto_parallelism_follows_the_cluster_cpus() -> None:
    auto = Settings(root="/tmp/lake")
    assert [parallelism(auto, cpus) for cpus in (None, 2, 7, 8, 16, 31, 64, 512)] == [1, 1, 1, 1, 2, 3, 4, 4]
    assert parallelism(dataclasses.replace(auto, parallel_stages=3), None) == 3

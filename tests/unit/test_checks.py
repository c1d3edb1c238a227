"""The table checks' arithmetic and configuration: gates from a model and settings, drift, bounds, freshness."""

from __future__ import annotations

import datetime as dt
import math

import polars as pl
import pytest

from lakehouse.errors import ConfigError
from lakehouse.quality import checks
from lakehouse.quality.validation import model_metadata
from lakehouse.settings import Settings, settings_from_env
from schemas.tpch import Lineitem, Orders


def test_gates_come_from_the_model_with_the_settings_on_top() -> None:
    settings = Settings(root="/tmp/x", max_quarantined_share={"*": 0.01, "orders": 0.05},
                        freshness_days={"orders": 2}, batch_rows={"*": (1, None)}, expect_delivery=("orders",),
                        check_actions={"orders.references": "fail"})

    gate = checks.gates("orders", model_metadata(Orders), settings)

    assert gate.max_quarantined_share == 0.05 and gate.freshness_days == 2 and gate.batch_rows == (1, None)
    assert gate.expect_delivery
    assert gate.references == {"o_custkey": ("customer", "c_custkey")}
    assert gate.drift["rows"] == 0.5
    assert gate.action("references") == "fail" and gate.action("drift_mean") == "warn"
    lines = checks.gates("lineitem", model_metadata(Lineitem), settings)
    assert lines.max_quarantined_share == 0.01 and not lines.expect_delivery and "rows" not in lines.drift
    assert lines.action("references") == "warn"


def test_a_model_with_an_unknown_gate_or_a_bad_reference_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown gate"):
        checks.gates("t", {"gates": {"max_rows": 5}}, Settings(root="/tmp/x"))
    with pytest.raises(ConfigError, match=r"must be 'table\.column'"):
        checks.gates("t", {"gates": {"references": {"a": "orders"}}}, Settings(root="/tmp/x"))


def test_drift_reports_the_largest_change_naming_month_and_column() -> None:
    gate = checks.Gates("orders", drift={"rows": 0.5, "mean": 0.2, "null_share": 0.05})
    old = checks.profile(pl.DataFrame({"p": [10.0] * 200, "c": ["x"] * 200}), ["p"])
    new = checks.profile(pl.DataFrame({"p": [10.0] * 150 + [40.0] * 50, "c": ["x"] * 150 + [None] * 50}), ["p"])

    found = {r.check: r for r in checks.drift(gate, [("1992-09-01", new, "1992-08-01", old)])}

    assert found["drift_rows"].passed and found["drift_rows"].observed == 0.0
    assert not found["drift_mean"].passed and found["drift_mean"].observed == pytest.approx(0.75)
    assert "1992-09 vs 1992-08: p mean 17.5, was 10" in found["drift_mean"].message
    assert not found["drift_null_share"].passed and found["drift_null_share"].observed == pytest.approx(0.25)
    assert "c null share 25.0%, was 0.0%" in found["drift_null_share"].message
    assert "drift_quantiles" not in found  # no threshold, no check


def test_small_months_compare_row_counts_only() -> None:
    gate = checks.Gates("orders", drift={"rows": 0.5, "mean": 0.2})
    tiny = checks.profile(pl.DataFrame({"p": [1.0] * 5}), ["p"])
    big = checks.profile(pl.DataFrame({"p": [100.0] * 500}), ["p"])

    found = {r.check: r for r in checks.drift(gate, [("1992-09-01", tiny, "1992-08-01", big)])}

    assert found["drift_mean"].passed and not found["drift_rows"].passed


def test_batch_rows_and_freshness_bounds() -> None:
    gate = checks.Gates("orders", batch_rows=(10, 100), freshness_days=3)
    assert checks.batch_rows(gate, 10).passed and checks.batch_rows(gate, 100).passed
    low, high = checks.batch_rows(gate, 9), checks.batch_rows(gate, 101)
    assert (low.passed, low.threshold, high.passed, high.threshold) == (False, 10, False, 100)
    today = dt.date(2026, 11, 27)
    assert checks.freshness(gate, dt.date(2026, 11, 24), today).passed
    stale = checks.freshness(gate, dt.date(2026, 11, 23), today)
    assert not stale.passed and stale.observed == 4
    empty = checks.freshness(gate, None, today)
    assert not empty.passed and math.isinf(empty.observed)


def test_gate_settings_are_read_from_the_environment() -> None:
    s = settings_from_env("/tmp/lake", env={
        "LAKEHOUSE_BATCH_ROWS": "orders=1..500000,lineitem=1..",
        "LAKEHOUSE_FRESHNESS_DAYS": "orders=2",
        "LAKEHOUSE_EXPECT_DELIVERY": "orders, lineitem",
        "LAKEHOUSE_MAX_INGEST_LAG_SECONDS": "*=3600",
        "LAKEHOUSE_CHECK_ACTIONS": "freshness=fail,orders.references=fail",
    })
    assert s.batch_rows == {"orders": (1, 500000), "lineitem": (1, None)}
    assert s.freshness_days == {"orders": 2.0}
    assert s.expect_delivery == ("orders", "lineitem")
    assert s.max_ingest_lag_seconds == {"*": 3600.0}
    assert s.check_actions == {"freshness": "fail", "orders.references": "fail"}
    with pytest.raises(ConfigError, match="LAKEHOUSE_BATCH_ROWS"):
        settings_from_env("/tmp/lake", env={"LAKEHOUSE_BATCH_ROWS": "orders=5"})
    with pytest.raises(ConfigError, match="LAKEHOUSE_CHECK_ACTIONS"):
        settings_from_env("/tmp/lake", env={"LAKEHOUSE_CHECK_ACTIONS": "freshness=drop"})

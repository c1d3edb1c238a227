"""Fail points do nothing unless armed, and do what they are armed to do."""

from __future__ import annotations

import pytest

from lakehouse.ops import faults
from lakehouse.running.runner import backfill_batches, month_range


def test_an_unarmed_point_does_nothing_and_an_armed_one_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.point("silver.orders:before_commit")
    monkeypatch.setenv(faults.ENV, "silver.orders:before_commit=raise; gold.x:after_commit=kill")
    faults.point("silver.lineitem:before_commit")
    with pytest.raises(faults.InjectedFault, match="fail point silver"):
        faults.point("silver.orders:before_commit")


def test_a_bad_fail_point_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.ENV, "silver.orders:before_commit=explode")
    with pytest.raises(ValueError, match="want <point>=kill"):
        faults.point("anything")


def test_backfill_months_and_batches() -> None:
    months = month_range("1995-11", "1996-02")
    assert months == ["1995-11-01", "1995-12-01", "1996-01-01", "1996-02-01"]
    assert backfill_batches(months, 3) == [("1995-11-01", "1996-01-01"), ("1996-02-01", "1996-02-01")]

"""The engine's task runner on a real Ray: reports in item order, an error of ours stops the call cleanly."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from lakehouse import engine
from lakehouse.errors import TransformError

pytestmark = pytest.mark.integration


def _mark(item: dict[str, Any], *, where: str, fail: int) -> list[int]:
    """Write ``<n>.started``, fail on item ``fail``, else work a little and write ``<n>.done``."""
    n = int(item["n"])
    Path(where, f"{n}.started").touch()
    if n == fail:
        raise TransformError(f"item {n} is bad", table="gold.t")
    time.sleep(0.3)
    Path(where, f"{n}.done").touch()
    return [n]


def _total(results: list[int]) -> list[int]:
    return [sum(results)]


def test_reports_come_back_in_item_order(ray_session: None, tmp_path: Path) -> None:
    items = [{"n": n} for n in range(20)]
    assert engine.map_items(items, _mark, fn_kwargs={"where": str(tmp_path), "fail": -1}) == list(range(20))
    assert engine.map_reduce(items, _mark, _total, fn_kwargs={"where": str(tmp_path), "fail": -1}) == [190]


def test_an_error_of_ours_stops_the_call_and_no_started_task_is_left_running(
    ray_session: None, tmp_path: Path
) -> None:
    # given: 40 items in groups on 2 CPUs; the first item fails at once
    items = [{"n": n} for n in range(40)]

    # when
    with pytest.raises(TransformError, match="item 0 is bad") as raised:
        engine.map_items(items, _mark, fn_kwargs={"where": str(tmp_path), "fail": 0})

    # then: the error is ours, with its table; when it reached us every task that started had finished its group
    assert raised.value.table == "gold.t"
    started = {int(p.stem) for p in tmp_path.glob("*.started")}
    done = {int(p.stem) for p in tmp_path.glob("*.done")}
    assert started - done == {0}, (started, done)  # the failed item; the rest of its group never started
    time.sleep(1.0)
    assert {int(p.stem) for p in tmp_path.glob("*.started")} == started, "a task started after the error was raised"
    # and: the call stopped starting groups: most items never ran
    assert len(started) < len(items) // 2


def test_map_reduce_raises_ours_from_a_part(ray_session: None, tmp_path: Path) -> None:
    items = [{"n": n} for n in range(8)]
    with pytest.raises(TransformError, match="item 3 is bad"):
        engine.map_reduce(items, _mark, _total, fn_kwargs={"where": str(tmp_path), "fail": 3})

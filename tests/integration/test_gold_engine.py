"""The gold engine on a small declared pipeline of its own: a correction that moves a sale to another shop merges the
shop totals (the shop left with no sale is deleted), lookups too large to broadcast are read filtered to each task's
keys with the same result, and a transform whose output breaks its model fails the run naming the column."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import polars as pl
import pytest

import lakehouse
from lakehouse import Gold, aggregate
from lakehouse.settings import Settings
from tests.conftest import RAY
from tests.shops import PIPELINE, ShopTotals, per_shop, shop_totals

pytestmark = pytest.mark.integration


SALES = "sale_id,shop_id,sold_on,amount\n"


def _lake(tmp_path: Path, **settings: object) -> tuple[Path, Settings]:
    root = tmp_path / "lake"
    (root / "raw/shops").mkdir(parents=True)
    (root / "raw/shops/shops.csv").write_text("shop_id,city\n1,Lyon\n2,Oslo\n3,Pune\n")
    (root / "raw/sales/d1").mkdir(parents=True)
    (root / "raw/sales/d1/part-0.csv").write_text(
        SALES + "1,1,2026-01-01,10\n2,1,2026-01-01,5\n3,2,2026-01-02,7\n4,3,2026-01-02,1\n")
    return root, Settings(root=str(root), ray=RAY, pipeline="tests.shops:PIPELINE", **settings)  # type: ignore[arg-type]


def _read(root: Path, table: str) -> list[dict[str, object]]:
    df = pl.read_delta(str(root / "gold" / table))
    return df.sort(df.columns[:2]).to_dicts()


def test_a_correction_that_empties_a_shop_deletes_its_total_and_updates_the_other(
    ray_session: None, tmp_path: Path
) -> None:
    # given two runs' worth of sales, the second correcting sale 4 (shop 3's only sale) to shop 2
    root, settings = _lake(tmp_path)
    assert lakehouse.run(settings).ok
    assert _read(root, "shop_totals") == [{"shop_id": 1, "sales": 2, "amount": 15.0},
                                          {"shop_id": 2, "sales": 1, "amount": 7.0},
                                          {"shop_id": 3, "sales": 1, "amount": 1.0}]
    (root / "raw/sales/fix").mkdir()
    (root / "raw/sales/fix/part-0.csv").write_text(SALES + "4,2,2026-01-02,1\n")

    # when
    report = lakehouse.run(settings)

    # then: shop 3 has no sale left and leaves the table, shop 2 has two; shop 1 is untouched (its day did not change)
    assert report.ok, report.error
    assert _read(root, "shop_totals") == [{"shop_id": 1, "sales": 2, "amount": 15.0},
                                          {"shop_id": 2, "sales": 2, "amount": 8.0}]
    assert "0 inserted, 1 updated, 1 deleted" in report.result("gold.shop_totals").message
    assert _read(root, "daily_city") == [{"sale_day": dt(1), "city": "Lyon", "amount": 15.0},
                                         {"sale_day": dt(2), "city": "Oslo", "amount": 8.0}]


def dt(day: int) -> object:
    import datetime

    return datetime.date(2026, 1, day)


def test_a_lookup_over_the_broadcast_threshold_is_read_by_key_with_the_same_result(
    ray_session: None, tmp_path: Path
) -> None:
    # given the same lake built with lookups broadcast, and with every lookup too large to broadcast
    small, wide = tmp_path / "a", tmp_path / "b"
    root_a, broadcast = _lake(small)
    root_b, by_key = _lake(wide, broadcast_max_rows=1)
    assert lakehouse.run(broadcast).ok and lakehouse.run(by_key).ok
    # then the gold tables are the same
    for table in ("daily_city", "shop_totals"):
        assert _read(root_a, table) == _read(root_b, table)


def _negative(partials: pl.DataFrame) -> pl.DataFrame:
    return shop_totals(partials).with_columns(-pl.col("amount"))


BROKEN = dataclasses.replace(PIPELINE, gold=[Gold("shop_totals", ShopTotals, plan=aggregate(
    "sales", by="shop_id", partial=per_shop, final=_negative))])


def test_an_output_that_breaks_its_model_fails_the_run_naming_table_column_and_check(
    ray_session: None, tmp_path: Path
) -> None:
    root, settings = _lake(tmp_path)
    report = lakehouse.run(dataclasses.replace(settings, pipeline=f"{__name__}:BROKEN"))
    assert isinstance(report.error, lakehouse.TransformError)
    assert re.fullmatch(r"gold.shop_totals: the output of _negative fails model ShopTotals: check "
                        r"greater_than_or_equal_to\(0\) on column amount \(value '-\d+\.0'\), 3 failure\(s\)",
                        str(report.error)), str(report.error)
    assert not (root / "gold/shop_totals").exists()

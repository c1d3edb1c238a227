"""Benchmark: a batch in which one key changes 100,000 times, against one in which 100,000 keys change once each, in
the same process: silver's dedup (orders, partition overwrite) and the change stage (customer, Debezium events).

    python bench/hot_key_batch.py [--changes 100000]

Each arm runs on a fresh copy of a processed TPC-H SF 0.01 lake. Printed: the stage's wall time, the peak memory
(PSS) of this process and its children (the local Ray's workers; bench/memory.py) while the run lasts, and hot/spread
ratios. Bounded means the hot batch costs no more than the spread one: a key's versions are reduced per key in the
task that reads them (silver keeps the latest row of a key per landed file before staging; the change stage keeps
every version, in the key's history, and applies the last).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from pathlib import Path

import polars as pl
from memory import PeakMemory  # bench/memory.py: the PSS of this process and its children

import lakehouse
from examples.tpch.demo import generate
from lakehouse import engine
from lakehouse.settings import RaySettings, Settings
from lakehouse.storage import Storage


def orders_batch(raw: Path, changes: int, hot: bool) -> None:
    base = pl.read_csv(raw / "orders/1992-03/part-0.csv", infer_schema=False).row(0, named=True)
    keys = [str(9_500_000)] * changes if hot else [str(9_500_000 + i) for i in range(changes)]
    pl.DataFrame({**{k: [v] * changes for k, v in base.items()}, "o_orderkey": keys,
                  "o_comment": [f"version {i}" for i in range(changes)]}).write_csv(raw / "orders/1992-03/batch.csv")


def customer_events(raw: Path, changes: int, hot: bool) -> None:
    customers = pl.read_csv(raw / "customer/customer.csv", infer_schema=False)
    rows = customers.to_dicts()
    lines = []
    for i in range(changes):
        before = rows[0] if hot else rows[i % len(rows)]
        after = {**before, "c_acctbal": f"{(i % 10_000) / 7:.2f}"}

        def typed(r: dict[str, str]) -> dict[str, object]:
            return {**r, "c_custkey": int(r["c_custkey"]), "c_nationkey": int(r["c_nationkey"]),
                    "c_acctbal": float(r["c_acctbal"])}

        lines.append(json.dumps({"before": typed(before), "after": typed(after),
                                 "source": {"connector": "postgresql", "db": "tpch", "table": "customer",
                                            "lsn": 2_000_000 + i, "ts_ms": 1_700_000_000_000 + i},
                                 "op": "u", "ts_ms": 1_700_000_000_000 + i}))
        if hot:
            rows[0] = after
        else:
            rows[i % len(rows)] = after
    (raw / "customer_cdc").mkdir(exist_ok=True)
    (raw / "customer_cdc/events-9999.ndjson").write_text("\n".join(lines) + "\n")


def arm(lake: Path, work: Path, name: str, table: str, land: object, changes: int, hot: bool,
        ray: RaySettings) -> tuple[float, int]:
    root = work / f"{name}-{'hot' if hot else 'spread'}"
    shutil.copytree(lake, root)
    land(root / "raw", changes, hot)  # type: ignore[operator]
    with PeakMemory() as rss:
        report = lakehouse.run(Settings(root=str(root), ray=ray, target_file_rows=1_000_000))
    assert report.ok, report.error
    result = report.result(table)
    assert result.ended_at is not None
    seconds = (result.ended_at - result.started_at).total_seconds()
    shutil.rmtree(root, ignore_errors=True)
    return seconds, rss.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.getLogger("lakehouse").setLevel(logging.WARNING)
    ray = RaySettings(num_cpus=2, object_store_bytes=512 << 20)
    work = Path(tempfile.mkdtemp(prefix="bench-hot-batch-"))
    try:
        with engine.ray_session(ray):
            lake = work / "lake"
            generate(Storage(str(lake)), scale_factor=0.01, months=8)
            assert lakehouse.run(Settings(root=str(lake), ray=ray)).ok
            for name, table, land in (("silver dedup", "silver.orders", orders_batch),
                                      ("change stage", "silver.customer_history", customer_events)):
                seen: dict[bool, list[tuple[float, int]]] = {True: [], False: []}
                for _ in range(args.repeats):
                    for hot in (True, False):
                        seen[hot].append(arm(lake, work, name.split()[0], table, land, args.changes, hot, ray))
                for hot in (True, False):
                    s = min(t for t, _ in seen[hot])
                    peak = max(p for _, p in seen[hot])
                    what = f"one key x {args.changes:,}" if hot else f"{args.changes:,} changes spread"
                    print(f"{name:<13} {what:<24} stage {s:6.2f} s   peak memory {peak / 2**30:5.2f} GiB")
                hot_s, spread_s = (min(t for t, _ in seen[h]) for h in (True, False))
                hot_m, spread_m = (max(p for _, p in seen[h]) for h in (True, False))
                print(f"{name:<13} hot/spread: time {hot_s / spread_s:.2f}, peak memory {hot_m / spread_m:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

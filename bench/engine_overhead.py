"""Benchmark: the fixed cost of putting work on Ray workers, per call, as a stage does it: ``engine.map_items`` (Ray
tasks, typed reports) against the same items through a Ray Data pipeline (``from_items`` + ``map_batches`` +
``take_all``, what the engine used before), in the same process on the same Ray. Each item does almost nothing, so
what is measured is the cost of a call.

    python bench/engine_overhead.py [--items 1 8 32] [--repeats 5]

A stage makes a few such calls per table (validate, merge, moved keys, partials, finals), so at small batches this
cost is much of a run.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Any

import pyarrow as pa

from lakehouse import engine
from lakehouse.settings import RaySettings


def report(item: dict[str, Any]) -> list[int]:
    return [item["i"]]


def table(batch: pa.Table) -> pa.Table:
    return batch


def ray_data(items: list[dict[str, Any]]) -> list[int]:
    import ray.data

    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 8)))
    return sorted(r["i"] for r in ds.map_batches(table, batch_size=1, batch_format="pyarrow").take_all())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with engine.ray_session(RaySettings(num_cpus=2, object_store_bytes=256 << 20)):
        engine.ensure_ray()
        import ray.data

        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
        began = time.monotonic()
        engine.map_items([{"i": 0}], report)
        tasks_first = time.monotonic() - began
        began = time.monotonic()
        ray_data([{"i": 0}])
        data_first = time.monotonic() - began
        print(f"first call in the process: tasks {tasks_first:.2f} s, Ray Data {data_first:.2f} s")
        for n in args.items:
            items = [{"i": i} for i in range(n)]
            tasks, data = [], []
            for _ in range(args.repeats):
                began = time.monotonic()
                assert engine.map_items(items, report) == list(range(n))
                tasks.append(time.monotonic() - began)
                began = time.monotonic()
                assert ray_data(items) == list(range(n))
                data.append(time.monotonic() - began)
            t, d = statistics.median(tasks), statistics.median(data)
            print(f"{n:3d} items: tasks {t * 1000:6.0f} ms   Ray Data {d * 1000:6.0f} ms   "
                  f"Ray Data / tasks {d / t:5.1f}x")


if __name__ == "__main__":
    main()

"""Benchmark: the files daily runs leave, and what ``lakehouse maintain`` makes of them.

The events example, one day landed per run for ``--days`` runs (one Ray session for all), then maintenance. Prints
the files each table holds after the runs and after maintenance, the maintenance's time, and the time of a query of
``gold.user_totals`` and of the next day's run before and after it (the same day landed into two copies of the lake,
one maintained), with the ratios.

    python bench/maintenance.py [--days 60] [--events-per-day 5000] [--work DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import duckdb
from deltalake import DeltaTable

import lakehouse
from examples.events.demo import generate
from lakehouse import engine
from lakehouse.running import runner
from lakehouse.settings import RaySettings, Settings
from lakehouse.storage import Storage

RAY = RaySettings(num_cpus=2, object_store_bytes=1 << 30)


def file_counts(root: Path) -> dict[str, int]:
    found = {}
    for layer in ("bronze", "silver", "gold", "_meta"):
        for t in sorted((root / layer).iterdir()) if (root / layer).exists() else []:
            if (t / "_delta_log").exists():
                found[f"{layer}.{t.name}"] = len(DeltaTable(str(t)).file_uris())
    return found


def query_seconds(root: Path, repeats: int = 5) -> float:
    uris = DeltaTable(str(root / "silver/events")).file_uris()
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        duckdb.sql(f"SELECT user_id, count(*), sum(amount) FROM read_parquet({uris!r}) GROUP BY 1").fetchall()
        best = min(best, time.perf_counter() - began)
    return best


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--days", type=int, default=60)
    args.add_argument("--events-per-day", type=int, default=5000)
    args.add_argument("--work", default=None)
    opts = args.parse_args()
    work = Path(opts.work or tempfile.mkdtemp(prefix="bench-maintain-"))
    shutil.rmtree(work, ignore_errors=True)
    feed, root = work / "feed", work / "lake"
    generate(Storage(str(feed)), days=opts.days + 1, events_per_day=opts.events_per_day)
    days = sorted(p.name for p in (feed / "raw/events").iterdir())
    root.mkdir(parents=True)
    for dim in ("users", "products"):
        shutil.copytree(feed / "raw" / dim, root / "raw" / dim)
    settings = Settings(root=str(root), ray=RAY, pipeline="events")
    with engine.ray_session(RAY):
        began = time.perf_counter()
        for day in days[:-1]:
            shutil.copytree(feed / "raw/events" / day, root / "raw/events" / day)
            report = lakehouse.run(settings)
            assert report.ok, report.error
        runs = time.perf_counter() - began
        before = file_counts(root)
        query_before = query_seconds(root)
        twin = work / "twin"
        shutil.copytree(root, twin)
        began = time.perf_counter()
        found = runner.maintain(settings)
        maintain = time.perf_counter() - began
        after = file_counts(root)
        query_after = query_seconds(root)
        nexts = {}
        for name, lake in (("unmaintained", twin), ("maintained", root)):
            shutil.copytree(feed / "raw/events" / days[-1], lake / "raw/events" / days[-1])
            began = time.perf_counter()
            assert lakehouse.run(Settings(root=str(lake), ray=RAY, pipeline="events")).ok
            nexts[name] = time.perf_counter() - began
    print(f"{len(days) - 1} daily runs of {opts.events_per_day} events in {runs:.1f}s; maintenance {maintain:.1f}s, "
          f"{found.orphans} orphans removed")
    print(f"{'table':32} {'files after runs':>16} {'after maintain':>15} {'per year of runs':>17}")
    for t in before:
        per_year = before[t] * 365 / (len(days) - 1)
        print(f"{t:32} {before[t]:16d} {after.get(t, 0):15d} {per_year:17.0f}")
    print(f"query of silver.events: {query_before * 1000:.1f} ms before, {query_after * 1000:.1f} ms after "
          f"(ratio {query_after / query_before:.2f})")
    print(f"next day's run: {nexts['unmaintained']:.2f}s unmaintained, {nexts['maintained']:.2f}s maintained "
          f"(ratio {nexts['maintained'] / nexts['unmaintained']:.2f})")


if __name__ == "__main__":
    main()

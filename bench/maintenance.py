"""Benchmark: the files daily runs leave, and what ``lakehouse maintain`` makes of them.

The events example, one day landed per run for ``--days`` runs (one Ray session for all), then maintenance. Prints
the files each table holds after the runs and after maintenance (and, for a table that grew with the runs, what a
year of daily runs leaves), the maintenance's time, and, on two copies of the lake (one maintained), the best time of
a DuckDB query of ``silver.events``, of ``lakehouse status`` and the median time of the next ``--next`` days' runs
(each day landed into both, the copies taking turns to go first), with the ratios.

    python bench/maintenance.py [--days 60] [--events-per-day 5000] [--next 5] [--work DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
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


def status_seconds(root: Path, repeats: int = 5) -> float:
    from lakehouse.ops import status
    from lakehouse.running.context import RunContext

    settings = Settings(root=str(root), ray=RAY, pipeline="events")
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        status.status(RunContext.start(settings, read_only=True), runner.pipeline_of(settings))
        best = min(best, time.perf_counter() - began)
    return best


def query_seconds(root: Path, repeats: int = 20) -> float:
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
    args.add_argument("--next", type=int, default=5)
    args.add_argument("--work", default=None)
    opts = args.parse_args()
    work = Path(opts.work or tempfile.mkdtemp(prefix="bench-maintain-"))
    shutil.rmtree(work, ignore_errors=True)
    feed, root = work / "feed", work / "lake"
    generate(Storage(str(feed)), days=opts.days + opts.next, events_per_day=opts.events_per_day)
    days = sorted(p.name for p in (feed / "raw/events").iterdir())
    root.mkdir(parents=True)
    for dim in ("users", "products"):
        shutil.copytree(feed / "raw" / dim, root / "raw" / dim)
    settings = Settings(root=str(root), ray=RAY, pipeline="events")
    with engine.ray_session(RAY):
        began = time.perf_counter()
        for day in days[:opts.days]:
            shutil.copytree(feed / "raw/events" / day, root / "raw/events" / day)
            report = lakehouse.run(settings)
            assert report.ok, report.error
        runs = time.perf_counter() - began
        before = file_counts(root)
        twin = work / "twin"
        shutil.copytree(root, twin)
        began = time.perf_counter()
        found = runner.maintain(settings)
        maintain = time.perf_counter() - began
        after = file_counts(root)
        lakes = {"unmaintained": twin, "maintained": root}
        query = {name: query_seconds(lake) for name, lake in lakes.items()}
        state = {name: status_seconds(lake) for name, lake in lakes.items()}
        nexts: dict[str, list[float]] = {name: [] for name in lakes}
        for i, day in enumerate(days[opts.days:]):
            for name in (list(lakes) if i % 2 == 0 else list(reversed(lakes))):
                lake = lakes[name]
                shutil.copytree(feed / "raw/events" / day, lake / "raw/events" / day)
                began = time.perf_counter()
                assert lakehouse.run(Settings(root=str(lake), ray=RAY, pipeline="events")).ok
                nexts[name].append(time.perf_counter() - began)
    print(f"{opts.days} daily runs of {opts.events_per_day} events in {runs:.1f}s; maintenance {maintain:.1f}s, "
          f"{found.orphans} orphans removed")
    print(f"{'table':32} {'files after runs':>16} {'after maintain':>15} {'a year of runs':>15}")
    for t in before:
        grows = before[t] >= opts.days
        per_year = f"{before[t] * 365 // opts.days:15d}" if grows else f"{'(fixed)':>15}"
        print(f"{t:32} {before[t]:16d} {after.get(t, 0):15d} {per_year}")
    for what, found_ in (("DuckDB query of silver.events", query), ("lakehouse status", state)):
        print(f"{what}: {found_['unmaintained'] * 1000:.1f} ms unmaintained, {found_['maintained'] * 1000:.1f} ms "
              f"maintained (ratio {found_['maintained'] / found_['unmaintained']:.2f})")
    med = {name: statistics.median(v) for name, v in nexts.items()}
    print(f"next {opts.next} days' runs, median: {med['unmaintained']:.2f}s unmaintained, {med['maintained']:.2f}s "
          f"maintained (ratio {med['maintained'] / med['unmaintained']:.2f})")


if __name__ == "__main__":
    main()

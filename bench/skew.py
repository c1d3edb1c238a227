"""Benchmark: a hot key in the final step of an aggregate, salted against plain hashing, in the same process.

The events example with one user owning 30% of the events (``--skews``) besides the Zipf tail of the others; the gold
table ``user_totals`` (per user: events, distinct sessions, spend; salted by session) is rebuilt from its silver
input with its final step spread over 8 and 16 tasks (``final_task_rows``), salted (the default) and with salting
off (``salts = 0``: plain hashing, hot keys still counted and recorded) and with detection off too (``salts = 0``
and ``hot_key_share = 1``: no count pass), alternately, ``--repeats`` times each. Then the same without the hot user
(``zipf``: the Zipf tail only, still skewed: its heaviest users are salted too) and with users evenly spread
(``uniform``: no skew at all, where salting should cost nothing but the count).

    python bench/skew.py [--days 14] [--users 20000] [--events-per-day 100000] [--repeats 6] [--skew 0.3]
                         [--datasets hot zipf uniform]

Two cores hide skew in wall time, so the balance is measured per task: max/mean partial rows per final task, and the
largest task's bytes held (Polars' estimate of the partial rows it finishes) against the median task's. A worker's
resident memory is no measure of one task's: the allocator keeps and reuses what earlier tasks freed (the peak a task
added to it, read from /proc, was 0 for the median task). Wall time is the gold build's, median of the repeats (the
arms in turn, each first as often), and the median of the repeats' salted/other ratios, less sensitive to the
machine's drift. Every build's table is checked equal to the first one's.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

import lakehouse
from examples.events.demo import ZIPF, generate
from lakehouse import engine
from lakehouse.gold.tasks import Finished
from lakehouse.running.context import RunContext
from lakehouse.running.runner import build_gold
from lakehouse.settings import RaySettings, Settings
from lakehouse.storage import Storage
from lakehouse.table import TableRef, snapshot

TABLE = "user_totals"
# name: (a hot user?, the Zipf exponent of the others, what it is)
DATASETS = {"hot": (True, ZIPF, "one user with {share:.0%} besides the Zipf tail"),
            "zipf": (False, ZIPF, "the Zipf tail only"),
            "uniform": (False, 0.0, "spread evenly (no skew)")}


def build(settings: Settings) -> tuple[float, list[Finished], int]:
    """Rebuild gold.user_totals from scratch: its wall time, its final tasks' loads, the slices of its hottest key."""
    ctx = RunContext.start(settings, full_refresh=True)
    began = time.monotonic()
    result = build_gold(ctx, TABLE)
    seconds = time.monotonic() - began
    assert result.status == "committed", result.message
    loads = [t for t in result.tasks if isinstance(t, Finished) and t.bucket >= 0]
    hot = max(result.hot_keys, key=lambda h: h.share, default=None)
    return seconds, loads, hot.salts if hot else 0


def imbalance(loads: list[Finished]) -> tuple[float, float]:
    rows = [t.rows for t in loads]
    held = [t.bytes for t in loads]
    return max(rows) / statistics.mean(rows), max(held) / statistics.median(held)


def arm(root: Path, settings: Settings, tasks: int, repeats: int, reference: pl.DataFrame | None) -> pl.DataFrame:
    rows = sum(f.rows for f in snapshot(Storage(str(root)), TableRef("silver", "events")).files)
    sized = dataclasses.replace(settings, final_task_rows=-(-rows // tasks))
    arms = {"salted": sized, "plain": dataclasses.replace(sized, salts={TABLE: 0}),
            "off": dataclasses.replace(sized, salts={TABLE: 0}, hot_key_share={TABLE: 1.0})}
    seen: dict[str, list[tuple[float, list[Finished], int]]] = {name: [] for name in arms}
    names = list(arms)
    for n in range(repeats):
        for name in names[n % 3:] + names[:n % 3]:  # the arms in turn, each first in a third of the repeats
            seen[name].append(build(arms[name]))
            table = pl.read_delta(str(root / "gold" / TABLE)).sort("user_id")
            if reference is None:
                reference = table
            assert_frame_equal(table, reference, check_exact=False, rel_tol=1e-12)
    wall = {name: statistics.median(s for s, _, _ in runs) for name, runs in seen.items()}
    for name, runs in seen.items():
        _, loads, salts = runs[-1]
        rows_ratio, held_ratio = imbalance(loads)
        print(f"  {tasks:>2} tasks  {name:<6}  max/mean rows {rows_ratio:5.2f}   largest/median bytes held "
              f"{held_ratio:5.2f}   hot key slices {salts:>2}   gold build {wall[name]:6.2f} s (median of "
              f"{repeats}: {', '.join(f'{s:.2f}' for s, _, _ in runs)})")
    paired = {other: statistics.median(a[0] / b[0] for a, b in zip(seen["salted"], seen[other], strict=True))
              for other in ("plain", "off")}
    print(f"  {tasks:>2} tasks  wall time salted/plain {wall['salted'] / wall['plain']:.3f} (median of the repeats' "
          f"ratios {paired['plain']:.3f}), salted/off {wall['salted'] / wall['off']:.3f} ({paired['off']:.3f}; off: "
          "hot keys not even counted)")
    assert reference is not None
    return reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--events-per-day", type=int, default=100_000)
    parser.add_argument("--skew", type=float, default=0.3, help="the hot user's share of the events in 'hot'")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS),
                        help="hot: one user with --skew besides the Zipf tail; zipf: the tail only; uniform: no skew")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the datasets here (and use those already there) instead of a temporary directory")
    args = parser.parse_args()
    logging.getLogger("lakehouse").setLevel(logging.WARNING)
    ray = RaySettings(num_cpus=2, object_store_bytes=1 << 30)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-skew-"))
    try:
        with engine.ray_session(ray):
            for name in args.datasets:
                skew, zipf, what = DATASETS[name]
                root = work / f"{name}-{args.days}x{args.events_per_day}-{args.users}-{args.skew if skew else 0}"
                began = time.monotonic()
                settings = Settings(root=str(root), ray=ray, pipeline="events")
                if not (root / "gold" / TABLE).exists():
                    generate(Storage(str(root)), days=args.days, users=args.users, events_per_day=args.events_per_day,
                             skew=args.skew if skew else None, zipf=zipf, seed=1)
                    report = lakehouse.run(settings)
                    assert report.ok, report.error
                what = what.format(share=args.skew)
                print(f"{name}: {args.days * args.events_per_day:,} events over {args.users:,} users, {what} "
                      f"(landed and run in {time.monotonic() - began:.0f} s)")
                reference = None
                for tasks in (8, 16):
                    reference = arm(root, settings, tasks, args.repeats, reference)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

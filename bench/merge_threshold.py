"""Where delta-rs ``DeltaTable.merge`` (one process) beats the distributed merge: small unpartitioned targets.

    python bench/merge_threshold.py [--sizes 10000,100000,1000000,3000000]

For each target size: a table of customers-like rows in files of at most 1M rows, a source with 1% of the keys
changed and 0.1% new; both merges on copies, ours with Ray already started and its workers warm (as in a run).
Prints wall times and memory growth (PSS of the whole process tree over its idle state) of delta-rs, of ``merge``
(what a run uses: delta-rs in a worker up to SMALL_TARGET_ROWS) and of the distributed path. Above GROUP_ROWS it also
times the distributed merge held to one task, against its split into key ranges.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory import PeakMemory, _tree_rss


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="10000,100000,1000000,3000000")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "lakehouse-bench" / "threshold"))
    args = p.parse_args()
    import polars as pl
    import pyarrow as pa
    from deltalake import DeltaTable

    from lakehouse import engine, table
    from lakehouse.engine import ray_session
    from lakehouse.settings import RaySettings
    from lakehouse.storage import Storage
    from lakehouse.storage.frames import write_frame
    from lakehouse.table import TableRef
    from lakehouse.table.merge import GROUP_ROWS, SMALL_TARGET_ROWS, MergeSpec, commit, execute, merge

    schema = pa.schema([("k", pa.int64()), ("name", pa.string()), ("balance", pa.float64()), ("segment", pa.string())])
    ref = TableRef("silver", "t")
    work = Path(args.workdir)
    with ray_session(RaySettings(num_cpus=2, object_store_bytes=1 << 30)):
        engine.ensure_ray()
        for n in (int(x) for x in args.sizes.split(",")):
            rows = pl.DataFrame({"k": range(n), "name": [f"Customer#{i}" for i in range(n)],
                                 "balance": [float(i % 1000) for i in range(n)], "segment": ["BUILDING"] * n})
            changed = rows.sample(fraction=0.01, seed=1).with_columns(pl.col("balance") + 1)
            new = pl.DataFrame({"k": range(n, n + max(1, n // 1000)), "name": "new", "balance": 1.0,
                                "segment": "AUTOMOBILE"}).cast(rows.schema)  # type: ignore[arg-type]
            source = pl.concat([changed, new])
            times, grew = {}, {}  # seconds, and GiB of PSS over the idle process tree (Ray's workers included)
            arms = ["delta-rs", "lakehouse", "distributed"] + (["one task"] if n > GROUP_ROWS else [])
            for arm in arms:
                root = work / f"{arm}-{n}"
                shutil.rmtree(root, ignore_errors=True)
                storage = Storage(str(root))
                adds = write_frame(storage, ref.rel, rows, schema, prefix="seed", max_rows=1_000_000)
                table.commit(storage, table.snapshot(storage, ref), schema=schema, adds=adds)
                base = _tree_rss(os.getpid())
                peak = PeakMemory(0.05)
                if arm == "delta-rs":
                    start = time.perf_counter()
                    peak.__enter__()
                    (DeltaTable(str(root / ref.rel)).merge(source.to_arrow(), predicate="t.k = s.k", source_alias="s",
                                                          target_alias="t")
                     .when_matched_update_all(predicate="t.balance <> s.balance OR t.name <> s.name OR "
                                                        "t.segment <> s.segment")
                     .when_not_matched_insert_all().execute())
                else:
                    staged = write_frame(storage, "_staging/src", source, schema, prefix="staged", max_rows=1_000_000)
                    spec, target = MergeSpec(keys=("k",)), table.snapshot(storage, ref)
                    start = time.perf_counter()
                    peak.__enter__()
                    if arm == "lakehouse":
                        merge(storage, target, staged, "_staging/src", spec, schema, run_id="b", max_rows=1_000_000)
                    else:
                        done = execute(storage, target, staged, "_staging/src", spec, schema, run_id="b",
                                       max_rows=1_000_000, group_rows=n if arm == "one task" else None)
                        commit(storage, target, done, spec, schema)
                times[arm] = time.perf_counter() - start
                peak.__exit__()
                grew[arm] = (peak.peak - base) / (1 << 30)
            path = "delta-rs in a worker" if n <= SMALL_TARGET_ROWS else "distributed"
            print(f"target {n:>9} rows  source {source.height:>6}  "
                  + "  ".join(f"{arm if arm != 'lakehouse' else f'merge ({path})'} {times[arm]:5.2f} s "
                              f"+{grew[arm]:.2f} GiB" for arm in arms), flush=True)


if __name__ == "__main__":
    main()

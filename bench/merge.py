"""Benchmark: MERGE of 1% changed + 0.1% new rows into silver.lineitem, ours (distributed, lakehouse.table.merge)
against delta-rs ``DeltaTable.merge`` in one process, on copies of the same table, measured in this script.

    python bench/merge.py --scale-factor 1 [--workdir /tmp/lakehouse-bench]

Needs the lake of ``bench/pipeline.py`` at the same scale factor (it is built if missing). Prints wall time, peak
memory (PSS of the whole process tree: delta-rs runs before Ray is started, ours includes Ray's processes), files read
and rewritten, and the ratios. Both results are compared row for row.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory import _tree_rss, breakdown, gib, timed

KEYS = ["l_orderkey", "l_linenumber"]


def make_source(target: Path, changed: float, new: float, seed: int = 7) -> object:
    """``changed`` of the rows with new quantity and price (same ship date), plus ``new`` as many new orders' lines;
    rows picked by a hash of their key, streaming (the target need not fit in memory)."""
    import polars as pl

    rows = pl.scan_delta(str(target))

    def share(fraction: float, salt: int) -> pl.Expr:
        return pl.struct(KEYS).hash(seed + salt) % 1_000_000 < int(fraction * 1_000_000)

    picked = rows.filter(share(changed, 0)).with_columns(
        (pl.col("l_quantity") + 1).alias("l_quantity"),
        (pl.col("l_extendedprice") * 1.01).round(2).alias("l_extendedprice"),
        pl.lit("bench-update").alias("_source_file"),
    )
    top = rows.select(pl.col("l_orderkey").max()).collect().item()
    extra = rows.filter(share(new, 1)).with_columns(
        (pl.col("l_orderkey") + top).alias("l_orderkey"),
        pl.lit("bench-insert").alias("_source_file"),
    )
    return pl.concat([picked, extra]).collect(engine="streaming")


def _write_source(target: Path, out: Path) -> None:
    make_source(target, changed=0.01, new=0.001).write_parquet(out)  # type: ignore[attr-defined]


def delta_rs_arm(target: Path, source: object) -> dict[str, int]:
    from deltalake import DeltaTable

    data = source.to_arrow()  # type: ignore[attr-defined]
    columns = [c for c in data.column_names if not c.startswith("_") and c not in KEYS and c != "ship_month"]
    differs = " OR ".join(f"(t.{c} IS DISTINCT FROM s.{c})" for c in columns)
    on = " AND ".join(f"t.{k} = s.{k}" for k in [*KEYS, "ship_month"])
    metrics = (
        DeltaTable(str(target))
        .merge(data, predicate=on, source_alias="s", target_alias="t")
        .when_matched_update_all(predicate=differs)
        .when_not_matched_insert_all()
        .execute()
    )
    return {k: int(v) for k, v in metrics.items() if isinstance(v, int)}


def stage_source(root: Path, source: object) -> list:  # type: ignore[type-arg]
    """The source as a run's validate tasks leave it: staged by target partition, by tasks on the Ray workers (which
    a run's merge then finds warm). Not timed: delta-rs is given the source in memory."""
    from lakehouse import engine, silver, table
    from lakehouse.storage import Storage

    storage = Storage(str(root))
    schema = table.snapshot(storage, silver.ref("lineitem")).schema
    assert schema is not None
    (root / "_staging/bench").mkdir(parents=True, exist_ok=True)
    source.write_parquet(root / "_staging/bench/source.parquet")  # type: ignore[attr-defined]
    months = sorted({m.isoformat() for m in source.get_column("ship_month").unique()})  # type: ignore[attr-defined]
    kwargs = {"storage": storage, "path": str(root / "_staging/bench/source.parquet"), "schema": schema}
    return engine.map_items([{"month": m} for m in months], _stage_month, fn_kwargs=kwargs)


def _stage_month(item: dict, *, storage: object, path: str, schema: object) -> list:  # type: ignore[type-arg]
    import datetime as dt

    import polars as pl

    from lakehouse.storage.frames import without, write_frame

    month = dt.date.fromisoformat(item["month"])
    rows = pl.read_parquet(path).filter(pl.col("ship_month") == month).drop("ship_month")
    files = write_frame(storage, "_staging/bench/merge", rows, without(schema, ["ship_month"]),  # type: ignore[arg-type]
                        partition_values={"ship_month": item["month"]}, prefix="staged", max_rows=1_000_000)
    return files


def lakehouse_arm(root: Path, staged: list) -> object:  # type: ignore[type-arg]
    """Plan from the log, merge on Ray workers, commit once."""
    from examples.tpch.pipeline import PIPELINE
    from lakehouse import silver, table
    from lakehouse.storage import Storage
    from lakehouse.table.merge import MergeSpec, merge

    storage = Storage(str(root))
    target = table.snapshot(storage, silver.ref("lineitem"))
    assert target.schema is not None
    spec = MergeSpec(keys=tuple(PIPELINE.silver_spec("lineitem").keys), partition="ship_month")
    return merge(storage, target, staged, "_staging/bench/merge", spec, target.schema, run_id="bench",
                 max_rows=1_000_000)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scale-factor", type=float, default=1.0)
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "lakehouse-bench"))
    args = p.parse_args()
    import polars as pl

    work = Path(args.workdir) / f"sf{args.scale_factor:g}"
    lake = work / "lake"
    if not (lake / "silver/lineitem").exists():
        subprocess.run([sys.executable, str(Path(__file__).parent / "pipeline.py"), "--scale-factor",
                        f"{args.scale_factor:g}", "--workdir", args.workdir, "--only-lakehouse"], check=True)
    arms = {name: work / f"merge-{name}" for name in ("delta-rs", "lakehouse")}
    for path in arms.values():
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(lake / "silver/lineitem", path / "silver/lineitem")
    target_rows = pl.scan_delta(str(lake / "silver/lineitem")).select(pl.len()).collect().item()
    # Built in a child process: reading the whole target there keeps it out of this process's memory, which both arms'
    # peaks include.
    source_file = work / "merge-source.parquet"
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_write_source, args=(lake / "silver/lineitem", source_file))
    child.start()
    child.join()
    source = pl.read_parquet(source_file)
    print(f"target silver.lineitem: {target_rows} rows; source {source.height} rows "  # type: ignore[attr-defined]
          f"(1% changed, 0.1% new)", flush=True)

    d_base = _tree_rss(os.getpid())
    metrics, d_secs, d_peak = timed(delta_rs_arm, arms["delta-rs"] / "silver/lineitem", source)
    m = {k: metrics.get(f"num_target_{k}") for k in ("files_added", "files_removed", "rows_copied",
                                                       "rows_updated", "rows_inserted")}
    print(f"{'delta-rs merge':<16} {d_secs:6.1f} s  peak {gib(d_peak)} (+{gib(d_peak - d_base)} over idle)  "
          + " ".join(f"{k} {v}" for k, v in m.items()), flush=True)
    print(f"  at the peak: {breakdown(timed.at_peak)}")  # type: ignore[attr-defined]

    from lakehouse.engine import ray_session
    from lakehouse.settings import RaySettings

    with ray_session(RaySettings(num_cpus=2, object_store_bytes=1 << 30)):
        from lakehouse.engine import ensure_ray

        ensure_ray()  # Ray's start-up is not the merge's: a run starts it once for all stages
        staged = stage_source(arms["lakehouse"], source)
        l_base = _tree_rss(os.getpid())
        result, l_secs, l_peak = timed(lakehouse_arm, arms["lakehouse"], staged)
    c = result.counts  # type: ignore[attr-defined]
    print(f"{'lakehouse merge':<16} {l_secs:6.1f} s  peak {gib(l_peak)} (+{gib(l_peak - l_base)} over idle Ray)"
          f"  files read {result.files_read}"  # type: ignore[attr-defined]
          f" rewritten {result.files_rewritten} added {result.files_added}  updated {c['updated']}"  # type: ignore[attr-defined]
          f" inserted {c['inserted']} unchanged {c['unchanged']}", flush=True)
    print(f"  at the peak: {breakdown(timed.at_peak)}")  # type: ignore[attr-defined]
    print(f"lakehouse / delta-rs: wall {l_secs / d_secs:.2f}x   peak memory {l_peak / d_peak:.2f}x   "
          f"memory over idle {(l_peak - l_base) / (d_peak - d_base):.2f}x")

    ours, theirs = (fingerprint(arms[arm] / "silver/lineitem") for arm in ("lakehouse", "delta-rs"))
    assert ours.equals(theirs), "results differ"
    print(f"results equal: {ours.get_column('rows').sum()} rows (per ship month: row count and a hash of every row)")


def fingerprint(path: Path) -> Any:
    """Per ship month, the row count and the sum of a hash of each row's values (lineage aside), streaming: equal for
    equal tables whatever their file layout and row order."""
    import polars as pl

    rows = pl.scan_delta(str(path)).drop("_source_file", "_source_line", "_ingested_at")
    rows = rows.select(sorted(rows.collect_schema().names()))
    return (rows.group_by("ship_month")
            .agg(pl.len().alias("rows"), (pl.struct(pl.all()).hash(11) % (1 << 32)).sum().alias("hash"))
            .sort("ship_month").collect(engine="streaming"))


if __name__ == "__main__":
    main()

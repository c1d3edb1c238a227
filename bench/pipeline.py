"""Benchmark: `lakehouse run` on TPC-H at a scale factor, per layer, against single-process baselines.

    python bench/pipeline.py --scale-factor 1 [--repeat 3] [--workdir /tmp/lakehouse-bench]

Arms, each run in this script on the same landed CSV files:
* floor: pyarrow reads every landed CSV once and writes it to Parquet once (no types, no Delta, no checks);
* polars: one process, Polars reads the CSVs typed, dedups, computes the three gold tables, writes Delta with
  deltalake (no validation, no quarantine, no incrementality);
* lakehouse: the engine (bronze → silver → gold on Ray, Pandera validation, partition overwrite, run records);
* lakehouse rerun: the same with nothing new landed.
Prints wall time, CPU-seconds and peak memory (PSS) of the whole process tree, and the ratio to each baseline (the
time the memory sampling took is printed too: on 2 CPUs it competes with what it measures).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory import gib, timed


def floor(raw: Path, out: Path) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    for i, f in enumerate(sorted(raw.rglob("*.csv"))):
        pq.write_table(pacsv.read_csv(f), out / f"{i}.parquet")


def polars_arm(raw: Path, out: Path) -> None:
    import polars as pl
    from deltalake import write_deltalake

    def read(src: str, dates: list[str]) -> pl.DataFrame:
        df = pl.read_csv(sorted(raw.glob(f"{src}/**/*.csv")), infer_schema_length=10000)
        return df.with_columns(pl.col(d).str.to_date() for d in dates)

    orders = read("orders", ["o_orderdate"]).unique("o_orderkey", keep="last")
    lineitem = read("lineitem", ["l_shipdate", "l_commitdate", "l_receiptdate"])
    lineitem = lineitem.unique(["l_orderkey", "l_linenumber"], keep="last")
    customer = read("customer", []).unique("c_custkey", keep="last")
    nation = read("nation", [])
    orders = orders.with_columns(pl.col("o_orderdate").dt.truncate("1mo").alias("order_month"))
    lineitem = lineitem.with_columns(pl.col("l_shipdate").dt.truncate("1mo").alias("ship_month"))
    write_deltalake(str(out / "orders"), orders.to_arrow(), partition_by=["order_month"])
    write_deltalake(str(out / "lineitem"), lineitem.to_arrow(), partition_by=["ship_month"])
    cn = customer.join(nation, left_on="c_nationkey", right_on="n_nationkey").select(
        "c_custkey", "c_name", pl.col("n_name").alias("nation"))
    rev = (
        lineitem.join(orders, left_on="l_orderkey", right_on="o_orderkey")
        .join(cn, left_on="o_custkey", right_on="c_custkey")
        .group_by("order_month", "nation")
        .agg((pl.col("l_extendedprice") * (1 - pl.col("l_discount"))).sum().alias("revenue"),
             pl.col("l_orderkey").n_unique().alias("order_count"), pl.len().alias("lineitem_count"))
    )
    clv = orders.group_by("o_custkey").agg(pl.len(), pl.col("o_totalprice").sum(), pl.col("o_orderdate").min(),
                                           pl.col("o_orderdate").max().alias("last")).join(
        cn, left_on="o_custkey", right_on="c_custkey")
    q1 = lineitem.group_by("ship_month", "l_returnflag", "l_linestatus").agg(
        pl.col("l_quantity").sum(), pl.col("l_extendedprice").sum(), pl.len())
    for name, df in (("rev", rev), ("clv", clv), ("q1", q1)):
        write_deltalake(str(out / name), df.to_arrow())


def lakehouse_arm(root: Path) -> object:
    from lakehouse import RaySettings, Settings, run

    report = run(Settings(root=str(root), ray=RaySettings(num_cpus=2, object_store_bytes=2 << 30)))
    if not report.ok:
        raise SystemExit(f"run failed: {report.error}")
    return report


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scale-factor", type=float, default=1.0)
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "lakehouse-bench"))
    p.add_argument("--parts-per-month", type=int, default=1)
    p.add_argument("--repeat", type=int, default=1, help="rounds of every arm; medians are compared")
    p.add_argument("--only-lakehouse", action="store_true",
                   help="build the lake without the baselines (bench/merge.py at scale factors Polars cannot hold)")
    args = p.parse_args()
    from examples.tpch.demo import generate
    from lakehouse.storage import Storage

    work = Path(args.workdir) / f"sf{args.scale_factor:g}"
    root = work / "lake"
    if not (root / "raw").exists():
        print(f"landing TPC-H SF {args.scale_factor:g} under {root / 'raw'} ...", flush=True)
        generate(Storage(str(root)), scale_factor=args.scale_factor, parts_per_month=args.parts_per_month)
    size = sum(f.stat().st_size for f in (root / "raw").rglob("*.csv"))
    print(f"raw CSV: {size / 1e9:.2f} GB in {sum(1 for _ in (root / 'raw').rglob('*.csv'))} files")

    # Each round runs every arm once, in the same order; medians over the rounds (a 2-CPU machine varies by 10%+
    # from one run to the next).
    runs: dict[str, list[tuple[float, float, int]]] = {}
    baselines = () if args.only_lakehouse else (("floor", floor), ("polars", polars_arm))
    for _ in range(args.repeat):
        for name, fn in baselines:
            out = work / f"out-{name}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            _, secs, peak = timed(fn, root / "raw", out)
            runs.setdefault(name, []).append((secs, timed.cpu, peak))  # type: ignore[attr-defined]
            print(f"{name:<18} {secs:7.1f} s  cpu {timed.cpu:6.1f} s  peak {gib(peak)}  "
                  f"(sampling: {timed.cost:.1f} s)", flush=True)
        for layer in ("bronze", "silver", "gold", "quarantine", "_meta", "_staging"):
            shutil.rmtree(root / layer, ignore_errors=True)
        report, secs, peak = timed(lakehouse_arm, root)
        runs.setdefault("lakehouse", []).append((secs, timed.cpu, peak))  # type: ignore[attr-defined]
        layers: dict[str, float] = {}
        for r in report.results:  # type: ignore[attr-defined]
            layers[r.table.split(".")[0]] = layers.get(r.table.split(".")[0], 0.0) + r.seconds
        print(f"{'lakehouse':<18} {secs:7.1f} s  cpu {timed.cpu:6.1f} s  peak {gib(peak)}  "
              + "  ".join(f"{k} {v:.1f} s" for k, v in layers.items()) + f"  (sampling: {timed.cost:.1f} s)",
              flush=True)
    if args.only_lakehouse:
        return
    _, secs2, peak2 = timed(lakehouse_arm, root)
    print(f"{'lakehouse rerun':<18} {secs2:7.1f} s  peak {gib(peak2)}  (nothing new landed)")
    med = {name: tuple(statistics.median(r[i] for r in rs) for i in range(3)) for name, rs in runs.items()}
    if args.repeat > 1:
        for name, (w, c, m) in med.items():
            print(f"{name:<18} median of {args.repeat}: {w:7.1f} s  cpu {c:6.1f} s  peak {gib(int(m))}")
    secs, cpu, peak = med["lakehouse"]
    for base in ("floor", "polars"):
        b_secs, b_cpu, b_peak = med[base]
        print(f"lakehouse / {base:<7} wall {secs / b_secs:5.2f}x   cpu {cpu / b_cpu:5.2f}x   "
              f"peak memory {peak / b_peak:5.2f}x")


if __name__ == "__main__":
    main()

"""Benchmark: the full TPC-H pipeline on a local root, on S3, and on S3 with a three-node Ray cluster.

    python bench/cluster.py [--scale-factor 0.1] [--work DIR]

Arms, each ``lakehouse run`` in a subprocess of its own on the same landed files, timed end to end (Ray start or
join included): ``local`` (a local root, the run's own local Ray of 2 CPUs), ``s3`` (an ``s3://`` root on a moto
server on loopback, in this process), ``cluster`` (the same S3 root, joining a head that takes no tasks and two
worker nodes of 1 CPU each, all on this machine: the same 2 CPUs). Every arm's tables are checked equal to the local
arm's. Prints wall time per arm and its ratio to local.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.tpch.demo import generate
from lakehouse.storage import Storage
from tests.harness import MULTI_NODE, assert_same_lake, cli_env, contents, ray_cluster, upload


def run(root: str, env: dict[str, str]) -> float:
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lakehouse.ops.cli", "run", "--root", root, "--quiet"], env=env,
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stdout + done.stderr
    return time.perf_counter() - began


def main() -> None:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--scale-factor", type=float, default=0.1)
    args.add_argument("--work", default=None)
    opts = args.parse_args()
    work = Path(opts.work or tempfile.mkdtemp(prefix="bench-cluster-"))
    shutil.rmtree(work, ignore_errors=True)
    raw, local = work / "landed", work / "local"
    generate(Storage(str(raw)), scale_factor=opts.scale_factor)
    shutil.copytree(raw / "raw", local / "raw")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a log line per request the S3 server serves
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    s3 = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
          "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
    boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], aws_access_key_id="bench", aws_secret_access_key="bench",
                 region_name="us-east-1").create_bucket(Bucket="lake")
    try:
        seconds = {"local": run(str(local), cli_env(work))}
        wanted = contents(local)
        for arm in ("s3", "cluster"):
            upload(raw, f"s3://lake/{arm}", s3)
        seconds["s3"] = run("s3://lake/s3", cli_env(work, **s3))
        with ray_cluster(s3, workers=2) as cluster:
            seconds["cluster"] = run("s3://lake/cluster", cli_env(work, ray_address=cluster.address, **s3,
                                                                  **MULTI_NODE))
        for arm in ("s3", "cluster"):
            assert_same_lake(contents(f"s3://lake/{arm}", s3), wanted)
    finally:
        server.stop()
    print(f"TPC-H SF {opts.scale_factor:g}, full pipeline raw to gold, 2 CPUs in every arm (tables equal in all):")
    for arm, s in seconds.items():
        print(f"  {arm:8} {s:7.1f} s   {s / seconds['local']:.2f}x local")


if __name__ == "__main__":
    main()

"""Every command on an ``s3://`` root, as an operator types them, against a real S3 server (moto) on loopback: the
same commands on a local root and on S3 leave the same tables, and the secret key never shows: not in any output,
any ``_meta`` table, nor any object the commands wrote."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import boto3
import polars as pl
import pytest
from moto.server import ThreadedMotoServer

from examples.events.demo import generate
from lakehouse.storage import Storage
from tests.harness import assert_same_lake, cli, cli_env, contents, upload, versions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CANARY = "canary-secret-7f3e9c1d5b"  # the secret access key: moto takes any


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    opts = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "operator",
            "AWS_SECRET_ACCESS_KEY": CANARY, "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
    boto3.client("s3", endpoint_url=opts["AWS_ENDPOINT_URL"], aws_access_key_id="operator",
                 aws_secret_access_key=CANARY, region_name="us-east-1").create_bucket(Bucket="lake")
    yield opts
    server.stop()


def _objects(s3: dict[str, str], prefix: str) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL"], aws_access_key_id="operator",
                          aws_secret_access_key=CANARY, region_name="us-east-1")
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket="lake", Prefix=prefix)
            for o in page.get("Contents", [])]
    return {k: client.get_object(Bucket="lake", Key=k)["Body"].read() for k in keys}


def test_every_command_on_s3_does_what_it_does_locally_and_never_shows_the_secret(
    s3: dict[str, str], tmp_path: Path, ray_address: str
) -> None:
    # given: the same events landed on a local root and under s3://lake/events (three days, a bad line in one)
    raw = tmp_path / "raw"
    generate(Storage(str(raw)), days=3, users=60, events_per_day=300, products=15, seed=3)
    with (raw / "raw/events" / sorted(p.name for p in (raw / "raw/events").iterdir())[-1] / "part-0.ndjson").open(
            "a") as f:
        f.write('{"event_id": "cut", "ts": \n')
    local = tmp_path / "local"
    shutil.copytree(raw / "raw", local / "raw")
    remote = "s3://lake/events"
    upload(raw, remote, s3)
    env = cli_env(tmp_path, ray_address=ray_address, **s3)
    said: list[str] = []

    def both(*args: str, pipeline: bool = True) -> tuple[str, str]:
        """The command on the local root, then on S3; both must succeed; their outputs."""
        outs = []
        for root in (str(local), remote):
            done = cli(*args, "--root", root, *(("--pipeline", "events") if pipeline else ()), env=env)
            said.extend([done.stdout, done.stderr])
            assert done.returncode == 0, f"{args} on {root}: {done.stderr}"
            outs.append(done.stdout)
        return outs[0], outs[1]

    # when: run, then plan and status, a backfill of the month, a replay of the quarantine, a query, a sweep
    both("run")
    assert contents(remote, s3) and versions(remote, s3) == versions(local)
    plan_local, plan_s3 = both("plan", "--format", "json")
    assert [p["action"] for p in json.loads(plan_local)] == [p["action"] for p in json.loads(plan_s3)]
    status_local, status_s3 = both("status", "--format", "json")
    drop = ("at", "root", "changed_at", "changed_by", "last_run", "last_ok", "partitions", "oldest_pending",
            "waiting_seconds")

    def shape(text: str) -> list[dict[str, object]]:
        return [{k: v for k, v in t.items() if k not in drop} for t in json.loads(text)["tables"]]

    assert shape(status_local) == shape(status_s3)
    both("backfill", "--from", "2026-03", "--to", "2026-03")
    both("quarantine", "replay", "--table", "events")
    count_local, count_s3 = both("query", "SELECT count(*) AS n FROM silver.events", "--format", "json",
                                 pipeline=False)
    assert count_local == count_s3 and json.loads(count_s3)["n"] > 0
    # and the same query with the credentials, region and endpoint in a profile of the AWS files instead of variables
    (tmp_path / "aws-credentials").write_text(
        f"[lake]\naws_access_key_id = operator\naws_secret_access_key = {CANARY}\n")
    (tmp_path / "aws-config").write_text(
        f"[profile lake]\nregion = us-east-1\nendpoint_url = {s3['AWS_ENDPOINT_URL']}\n")
    by_profile = {k: v for k, v in env.items() if not k.startswith("AWS_")} | {
        "AWS_PROFILE": "lake", "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config")}
    done = cli("query", "SELECT count(*) AS n FROM silver.events", "--format", "json", "--root", remote,
               env=by_profile)
    said.extend([done.stdout, done.stderr])
    assert done.returncode == 0 and done.stdout == count_s3, done.stderr
    both("sweep", "--retention-hours", "0", "--dry-run", pipeline=False)

    # then: the same tables, with as many versions, on both roots
    assert versions(remote, s3) == versions(local)
    assert_same_lake(contents(remote, s3), contents(local))
    # and: rolling back each root's last committing run (the backfill) leaves the same tables on both
    for root, options in ((str(local), None), (remote, s3)):
        runs = pl.read_delta(f"{root}/_meta/runs", storage_options=options).filter(pl.col("status") == "committed")
        last = runs.sort("started_at").get_column("run_id")[-1]
        rolled = cli("rollback", last, "--root", root, "--pipeline", "events", env=env)
        said.extend([rolled.stdout, rolled.stderr])
        assert rolled.returncode == 0 and "tables restored" in rolled.stdout, rolled.stderr
    assert versions(remote, s3) == versions(local)
    assert_same_lake(contents(remote, s3), contents(local))

    # and: the secret key is nowhere: not in what any command printed, not in any _meta table, not in any object
    assert not [out for out in said if CANARY in out]
    for table in ("runs", "checks", "rejected_files", "hot_keys"):
        try:
            frame = pl.read_delta(f"{remote}/_meta/{table}", storage_options=s3)
        except Exception:  # a _meta table no command had reason to write
            continue
        assert CANARY not in frame.write_csv(), table
    written = _objects(s3, "events/")
    assert written and not [k for k, body in written.items() if CANARY.encode() in body]

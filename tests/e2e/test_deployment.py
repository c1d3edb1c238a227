"""End to end: the ``tpch`` deployment of prefect.yaml, run by a real Prefect server and a real process worker.

Given TPC-H landed under a fresh root, a Prefect server on a free port, the work pool and the deployment made with
``prefect --no-prompt deploy --all``, and a process worker; when the deployment is run (twice); then both runs
complete, each publishes its summary artifact, the gold tables equal DuckDB's answer on the raw CSV files, and the
second run commits nothing.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import httpx
import polars as pl
import pytest

from tests.oracle import SORT, assert_frames_match, expected

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.extended]

REPO = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]
POOL = "lakehouse"
DEPLOYMENT = "medallion/tpch"
SUMMARY_KEY = "medallion-run-summary"


@dataclass(frozen=True)
class Stack:
    api_url: str
    env: dict[str, str]
    logs: Path
    processes: list[subprocess.Popen[bytes]]

    def start_worker(self) -> subprocess.Popen[bytes]:
        worker = _start(["worker", "start", "--pool", POOL, "--type", "process"], self.env,
                        self.logs / f"worker-{len(self.processes)}.log")
        self.processes.append(worker)
        return worker

    def prefect(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*PREFECT, *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def tail(self, name: str, lines: int = 60) -> str:
        path = self.logs / name
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A Prefect server on a free port, the work pool, the deployment and a process worker; all stopped at the end."""
    base = tmp_path_factory.mktemp("prefect-e2e")
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    # Ray's socket paths must stay short: a private dir directly under /tmp, not pytest's deep tmp path.
    ray_temp = Path("/tmp") / f"lhe2e-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LAKEHOUSE_")) and k != "RAY_ADDRESS"}
    env.update(
        PREFECT_HOME=str(base / "home"),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_WORKER_QUERY_SECONDS="1",
        # A run kept waiting by the deployment's concurrency limit is retried this often (default 30 s).
        PREFECT_DEPLOYMENT_CONCURRENCY_SLOT_WAIT_SECONDS="3",
        # As infra/env.sh: bounded API requests, heartbeats every 30 s, a run silent for 60 s is a zombie.
        PREFECT_API_REQUEST_TIMEOUT="15",
        PREFECT_CLIENT_MAX_RETRIES="2",
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30",
        LAKEHOUSE_ZOMBIE_SECONDS="60",
        LAKEHOUSE_PROJECT_DIR=str(REPO),
        LAKEHOUSE_RAY_CPUS="2",
        LAKEHOUSE_RAY_OBJECT_STORE_BYTES=str(512 << 20),
        LAKEHOUSE_RAY_TEMP_DIR=str(ray_temp),
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="disabled",
    )
    processes: list[subprocess.Popen[bytes]] = []
    stack = Stack(api_url=api_url, env=env, logs=base, processes=processes)
    try:
        server = ["server", "start", "--host", "127.0.0.1", "--port", str(port)]
        processes.append(_start(server, env, base / "server.log"))
        _wait_healthy(api_url, processes[0], stack)

        pool = stack.prefect("work-pool", "create", POOL, "--type", "process", "--overwrite")
        assert pool.returncode == 0, pool.stdout + pool.stderr
        deploy = stack.prefect("--no-prompt", "deploy", "--all")
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        zombies = subprocess.run([sys.executable, "infra/zombies.py"], cwd=REPO, env=env, capture_output=True,
                                 text=True, timeout=120)
        assert zombies.returncode == 0, zombies.stdout + zombies.stderr

        processes.append(_start(["worker", "start", "--pool", POOL, "--type", "process"], env, base / "worker.log"))
        yield stack
    finally:
        for proc in reversed(processes):
            _stop(proc)
        shutil.rmtree(ray_temp, ignore_errors=True)


def test_deployment_runs_the_pipeline_to_gold_and_reruns_as_a_no_op(stack: Stack, tmp_path: Path) -> None:
    from examples.tpch.demo import generate
    from lakehouse.storage import Storage

    root = tmp_path / "lake"
    generate(Storage(str(root)), scale_factor=0.01, months=6)

    with _client(stack) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
    assert deployment.entrypoint == "flows/medallion.py:medallion"
    assert deployment.work_pool_name == POOL
    assert deployment.parameters == {"pipeline": "tpch"}
    assert deployment.global_concurrency_limit is not None and deployment.global_concurrency_limit.limit == 1

    first = _run_deployment(stack, root, params={"progress_every": "0"})
    summary = _summary(stack, first)
    assert len(summary) == 15  # 6 sources, 5 silver tables, customer's change events, 3 gold tables
    rows = {row["table"]: row for row in summary}
    # no change events were landed: their bronze table and the history are skipped, everything else committed
    assert {t for t, row in rows.items() if row["status"] != "committed"} == {"bronze.customer_cdc",
                                                                             "silver.customer_history"}, summary
    assert rows["bronze.lineitem"]["rows_read"] == rows["silver.lineitem"]["rows_written"] > 0

    for table, keys in SORT.items():
        actual = pl.read_delta(str(root / "gold" / table))
        assert_frames_match(actual, expected(root / "raw", table), keys)

    # the run's progress reached 100% on its page, and its log told each step of each stage as it went
    progress = _artifact(stack, first, "medallion-progress")
    assert progress.type == "progress" and float(progress.data) == 100.0
    logs = _logs(stack, first)
    assert re.search(r"^bronze\.lineitem: ingest file (\d+)/\1 \(100%\), [\d,]+ rows", logs, re.M), logs[-3000:]
    assert re.search(r"^silver\.orders: validate file \d+/\d+ \(\d+%\)", logs, re.M), logs[-3000:]

    report = _artifact(stack, first, "medallion-quality-report")
    assert report.type == "markdown" and "# Quality report: run `" in report.data
    assert "Nothing was quarantined or rejected." in report.data
    # the models' table checks ran in the deployment: clean TPC-H has no orphans
    assert "| silver.lineitem | references(l_orderkey -> orders.o_orderkey) | 0 | 0 | warn | passed |" in report.data

    versions = {table: _delta_version(root / "gold" / table) for table in SORT}
    second = _run_deployment(stack, root)
    assert second != first
    assert {row["status"] for row in _summary(stack, second)} == {"skipped"}
    assert {table: _delta_version(root / "gold" / table) for table in SORT} == versions


CANARY = "canary-secret-51c0e9a7d3"  # the secret access key of the S3 store: moto takes any


def test_a_deployment_on_s3_reads_its_credentials_from_a_block_and_no_output_shows_them(
    stack: Stack, tmp_path: Path
) -> None:
    import boto3
    from moto.server import ThreadedMotoServer
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    from examples.events.demo import generate
    from lakehouse.storage import Storage
    from tests.harness import assert_same_lake, contents, upload

    # given: an S3 server on loopback whose key is known only to an AwsCredentials block on the Prefect server (the
    # worker's environment has no AWS_* variable), and the events example landed on it and on a local root
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL"} & set(stack.env)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        opts = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "deployer",
                "AWS_SECRET_ACCESS_KEY": CANARY, "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
        s3 = boto3.client("s3", endpoint_url=opts["AWS_ENDPOINT_URL"], aws_access_key_id="deployer",
                          aws_secret_access_key=CANARY, region_name="us-east-1")
        s3.create_bucket(Bucket="lake")
        with temporary_settings({PREFECT_API_URL: stack.api_url}):
            AwsCredentials(aws_access_key_id="deployer", aws_secret_access_key=CANARY, region_name="us-east-1",
                           aws_client_parameters=AwsClientParameters(endpoint_url=opts["AWS_ENDPOINT_URL"]),
                           ).save("lake-s3", overwrite=True)
        local = tmp_path / "local"
        generate(Storage(str(local)), days=2, users=40, events_per_day=200, products=10, seed=5)
        remote = "s3://lake/events"
        upload(local, remote, opts)

        # when the events deployment runs on the S3 root with the block's name (and two stages at once, as on a
        # bigger cluster), and on the local root without either
        on_s3 = _run_deployment(stack, remote, name="medallion/events", params={
            "credentials": "aws-credentials/lake-s3"}, env={"LAKEHOUSE_PARALLEL_STAGES": "2"})
        _run_deployment(stack, local, name="medallion/events")

        # then it committed, and left the tables the local run left
        assert {row["status"] for row in _summary(stack, on_s3)} == {"committed"}
        assert_same_lake(contents(remote, opts), contents(local))
        # and its independent stages (the gold tables, which read silver.events only) ran at once, as task runs of
        # the flow run
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        with _client(stack) as client:
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[on_s3])))
        spans = sorted((t.start_time, t.end_time, t.name) for t in tasks if t.name.startswith("gold."))
        assert len(spans) >= 2 and all(t.state is not None and t.state.is_completed() for t in tasks), tasks
        assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)), spans

        # when a run names a block that is not there, it fails saying which
        missing = _run_deployment(stack, remote, name="medallion/events", watch=False,
                                  params={"credentials": "aws-credentials/nosuch"})
        with _client(stack) as client:
            deadline = time.monotonic() + 300
            while not (state := client.read_flow_run(missing).state) or not state.is_final():
                assert time.monotonic() < deadline, stack.tail("worker.log")
                time.sleep(1)
        assert state.is_failed(), state
        assert "credentials block 'aws-credentials/nosuch' is not on the Prefect server" in (state.message or ""), state

        # and the secret is nowhere: not in the runs' parameters, logs or artifacts, their task runs, the server's
        # and the worker's logs, Ray's logs, the Prefect database, any _meta table or any object the runs wrote
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        with _client(stack) as client:
            for run_id in (on_s3, missing):
                flow_run = client.read_flow_run(run_id)
                assert flow_run.parameters["credentials"].startswith("aws-credentials/")
                assert CANARY not in flow_run.model_dump_json()
                assert CANARY not in _logs(stack, run_id)
                artifacts = client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
                assert artifacts and not [a.key for a in artifacts if CANARY in a.model_dump_json()]
                task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
                assert not [t.name for t in task_runs if CANARY in t.model_dump_json()]
        files = [p for p in stack.logs.rglob("*") if p.is_file() and p.suffix != ".lock"]
        ray_logs = Path(stack.env["LAKEHOUSE_RAY_TEMP_DIR"])
        files += [p for p in ray_logs.rglob("*") if p.is_file() and not p.is_socket()] if ray_logs.exists() else []
        assert any(p.name.endswith(".db") for p in files), "the Prefect database was not found"
        assert not [str(p) for p in files if CANARY.encode() in p.read_bytes()]
        for table in ("runs", "checks", "rejected_files", "hot_keys"):
            frame = pl.read_delta(f"{remote}/_meta/{table}", storage_options=opts) if _has_table(
                s3, f"events/_meta/{table}/") else None
            assert frame is None or CANARY not in frame.write_csv(), table
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="lake", Prefix="events/")
                for o in page.get("Contents", [])]
        assert keys and not [k for k in keys if CANARY.encode() in s3.get_object(Bucket="lake", Key=k)["Body"].read()]
    finally:
        server.stop()


def _has_table(s3: Any, prefix: str) -> bool:
    return bool(s3.list_objects_v2(Bucket="lake", Prefix=prefix + "_delta_log/").get("KeyCount"))


def test_one_active_run_at_a_time_and_the_backfill_deployment(stack: Stack, tmp_path: Path) -> None:
    from examples.tpch.demo import generate
    from lakehouse.storage import Storage

    root = tmp_path / "lake"
    generate(Storage(str(root)), scale_factor=0.01, months=4)

    # when two runs of the pipeline are submitted at once, the second waits for the first (concurrency limit 1)
    ids = [_run_deployment(stack, root, watch=False) for _ in range(2)]
    runs = [_wait_completed(stack, i) for i in ids]
    first, second = sorted(runs, key=lambda r: r.start_time)
    assert first.end_time is not None and second.start_time is not None
    assert first.end_time <= second.start_time, (first.end_time, second.start_time)
    cdc = {"bronze.customer_cdc", "silver.customer_history"}  # no change events landed: nothing to do
    statuses = {r.id: {row["status"] for row in _summary(stack, r.id) if row["table"] not in cdc} for r in runs}
    assert statuses[first.id] == {"committed"} and statuses[second.id] == {"skipped"}
    silver_versions = {t: _delta_version(root / "silver" / t) for t in ("orders", "lineitem")}

    # when the backfill deployment rebuilds two months, one per batch
    months = {"from_month": "1992-02", "to_month": "1992-03", "batch_months": "1"}
    backfill = _run_deployment(stack, root, name="medallion/backfill", params=months)

    # then it made one task per table per batch, one commit each, and gold still equals the raw files' answer
    summary = _summary(stack, backfill)
    assert [row["table"] for row in summary] == [
        f"{t}" for _ in range(2) for t in ("silver.orders", "silver.lineitem", *(f"gold.{g}" for g in SORT))
    ]
    assert {t: _delta_version(root / "silver" / t) for t in silver_versions} == {
        t: v + 2 for t, v in silver_versions.items()}
    for table, keys in SORT.items():
        assert_frames_match(pl.read_delta(str(root / "gold" / table)), expected(root / "raw", table), keys)

    # when the maintenance deployment runs: the runs' records (a file per run) are compacted, the health of every
    # table is on the flow-run page and in _meta.table_health, and gold still equals the raw files' answer
    maintenance = _run_deployment(stack, root, name="medallion/maintenance")
    health = {row["table"]: row for row in _summary(stack, maintenance, key="lakehouse-table-health")}
    assert health["_meta.runs"]["outcome"] == "compacted" and health["_meta.runs"]["files_after"] == 1
    assert health["bronze.orders"]["outcome"] == "compacted"  # a file per landed file before: few, large ones now
    recorded = set(pl.read_delta(str(root / "_meta/table_health")).get_column("table"))
    assert {"silver.orders", "gold.revenue_by_nation_month", "_meta.runs"} <= recorded <= set(health)
    for table, keys in SORT.items():
        assert_frames_match(pl.read_delta(str(root / "gold" / table)), expected(root / "raw", table), keys)


def test_a_run_whose_worker_dies_is_marked_crashed_and_the_next_run_is_not_blocked(
    stack: Stack, tmp_path: Path
) -> None:
    from examples.tpch.demo import generate
    from lakehouse.storage import Storage

    root = tmp_path / "lake"
    generate(Storage(str(root)), scale_factor=0.01, months=6)

    # given: a run of the deployment under way (Running, past its first stage)
    flow_run_id = _run_deployment(stack, root, watch=False)
    deadline = time.monotonic() + 300
    while not (root / "bronze/region/_delta_log").exists():
        assert time.monotonic() < deadline, stack.tail("worker.log")
        time.sleep(0.5)
    with _client(stack) as client:
        assert client.read_flow_run(flow_run_id).state.is_running()

    # when the machine's worker dies with the run in it: every process of the run, and the worker, killed at once
    killed = _kill_run(flow_run_id)
    assert killed, "found no process of the flow run"
    for proc in stack.processes[1:]:  # the workers; the server stays
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    died = time.monotonic()

    # then the run is not left Running: within the zombie window (60 s, and the server's evaluation) it is Crashed
    while True:
        with _client(stack) as client:
            run = client.read_flow_run(flow_run_id)
        if run.state is not None and run.state.is_crashed():
            break
        assert time.monotonic() - died < 180, f"still {run.state} {time.monotonic() - died:.0f}s after the worker died"
        time.sleep(2)
    waited = time.monotonic() - died
    assert "No heartbeat for 60s" in (run.state.message or ""), run.state
    assert waited >= 30, f"marked Crashed {waited:.0f}s after it died: sooner than a heartbeat could be missed"

    # when a worker is back and the deployment runs again (one run at a time: the crashed one must not hold the slot)
    stack.start_worker()
    again = _run_deployment(stack, root)

    # then it completes, and the tables equal the raw files' answer: the crashed run left nothing half done
    assert {row["status"] for row in _summary(stack, again)} <= {"committed", "skipped"}
    for table, keys in SORT.items():
        assert_frames_match(pl.read_delta(str(root / "gold" / table)), expected(root / "raw", table), keys)


def _kill_run(flow_run_id: UUID) -> list[int]:
    """SIGKILL every process of the flow run (its engine, and the Ray processes it started, which inherit its
    environment), as a lost machine would; the pids killed."""
    marker = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    killed = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
        except (OSError, ProcessLookupError):
            continue
    return killed


def _run_deployment(
    stack: Stack, root: Path | str, *, name: str = DEPLOYMENT, params: dict[str, str] | None = None, watch: bool = True,
    env: dict[str, str] | None = None,
) -> UUID:
    """Run a deployment with ``root`` (and ``env`` in the flow run's environment, a job variable); unless ``watch`` is
    off, wait for it through the CLI and check it completed."""
    args = ["deployment", "run", name, "--param", f"root={root}"]
    for key, value in (params or {}).items():
        args += ["--param", f"{key}={value}"]
    if env:
        args += ["--job-variable", f"env={json.dumps(env)}"]
    if watch:
        args += ["--watch", "--watch-timeout", "600"]
    run = stack.prefect(*args, timeout=660)
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"{output}\n--- worker log ---\n{stack.tail('worker.log')}"
    match = re.search(r"UUID: ([0-9a-f-]{36})", output)
    assert match, output
    flow_run_id = UUID(match.group(1))
    if watch:
        flow_run = _wait_completed(stack, flow_run_id)
        assert flow_run.parameters["root"] == str(root)
    return flow_run_id


def _wait_completed(stack: Stack, flow_run_id: UUID, timeout: float = 600) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with _client(stack) as client:
            flow_run = client.read_flow_run(flow_run_id)
        if flow_run.state is not None and flow_run.state.is_final():
            break
        assert time.monotonic() < deadline, f"{flow_run_id} still {flow_run.state}\n{stack.tail('worker.log')}"
        time.sleep(1)
    assert flow_run.state.is_completed(), f"{flow_run.state}\n{stack.tail('worker.log')}"
    return flow_run


def _summary(stack: Stack, flow_run_id: UUID, key: str = SUMMARY_KEY) -> list[dict[str, Any]]:
    """The rows of the run's summary table artifact (or another table artifact of the run, by ``key``)."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with _client(stack) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[key])
            )
        )
    assert len(artifacts) == 1, artifacts
    assert artifacts[0].type == "table"
    data = artifacts[0].data
    rows = json.loads(data) if isinstance(data, str) else data
    assert isinstance(rows, list) and all(isinstance(r, dict) for r in rows), rows
    return rows


def _artifact(stack: Stack, flow_run_id: UUID, key: str) -> Any:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with _client(stack) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[key])
            )
        )
    assert len(found) == 1, found
    return found[0]


def _logs(stack: Stack, flow_run_id: UUID) -> str:
    """Every log line of the flow run and its task runs, oldest first."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    with _client(stack) as client:
        found = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                 sort=LogSort.TIMESTAMP_ASC, limit=200)
        lines = [log.message for log in found]
        while len(found) == 200:
            found = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                     sort=LogSort.TIMESTAMP_ASC, limit=200, offset=len(lines))
            lines += [log.message for log in found]
    return "\n".join(lines)


def _client(stack: Stack) -> SyncPrefectClient:
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(stack.api_url)


def _delta_version(path: Path) -> int:
    return max(int(p.stem) for p in (path / "_delta_log").glob("*.json"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # A session of its own, so one signal to the group stops it and whatever it started (uvicorn, flow runs).
    with log.open("wb") as out:
        return subprocess.Popen(
            [*PREFECT, *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_healthy(api_url: str, server: subprocess.Popen[bytes], stack: Stack, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"server exited:\n{stack.tail('server.log')}"
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"Prefect server not healthy after {timeout}s:\n{stack.tail('server.log')}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass

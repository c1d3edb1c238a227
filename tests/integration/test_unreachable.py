"""A run pointed at a Ray cluster or an S3 endpoint where nothing answers fails within its timeout, naming the address
and what to check (Ray and the S3 clients alone retry for minutes), and leaves no table behind. The CLI in a
subprocess, as an operator meets it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lakehouse.storage import Storage
from lakehouse.table import TableRef, snapshot

pytestmark = pytest.mark.integration


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens there


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port on loopback that accepts connections (the kernel completes them) and never says a word."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


def _lakehouse(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lakehouse.ops.cli", *args], capture_output=True, text=True,
                          env={"RAY_USAGE_STATS_ENABLED": "0", "PATH": "/usr/bin:/bin", **env}, timeout=timeout)


def test_a_cluster_address_where_nothing_listens_fails_fast_naming_it(tmp_path: Path) -> None:
    # given: a day of events landed, and RAY_ADDRESS at a port where nothing listens
    root = tmp_path / "lake"
    landed = _lakehouse("demo-data", "--root", str(root), "--pipeline", "events", "--days", "1", "--users", "20",
                        "--events-per-day", "50", env={})
    assert landed.returncode == 0, landed.stderr
    address = f"127.0.0.1:{_closed_port()}"

    # when
    began = time.monotonic()
    proc = _lakehouse("run", "--root", str(root), "--pipeline", "events",
                      env={"RAY_ADDRESS": address, "LAKEHOUSE_RAY_CONNECT_TIMEOUT": "10"})
    seconds = time.monotonic() - began

    # then: one error line naming the address, the setting and what to check, well within the timeout's order
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert f"no Ray cluster answers at {address}" in errors[0]
    assert "RAY_ADDRESS" in errors[0] and "connection refused" in errors[0] and "GCS port" in errors[0]
    assert seconds < 60
    # and: nothing was committed
    assert not snapshot(Storage(str(root)), TableRef("bronze", "events")).exists


@pytest.mark.parametrize("silent", [False, True], ids=["refused", "silent"])
def test_an_s3_endpoint_that_does_not_answer_fails_fast_naming_it(silent: bool, silent_port: int) -> None:
    # given: an s3:// root whose endpoint refuses connections, or accepts them and never answers
    endpoint = f"http://127.0.0.1:{silent_port if silent else _closed_port()}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "secret",
           "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true", "LAKEHOUSE_STORAGE_TIMEOUT": "3"}

    # when
    began = time.monotonic()
    proc = _lakehouse("run", "--root", "s3://lake/demo", "--pipeline", "events", env=env)
    seconds = time.monotonic() - began

    # then: one error line naming the endpoint and the root, within the timeout and the CLI's start
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: the S3 endpoint {endpoint} (AWS_ENDPOINT_URL) of root s3://lake/demo does not answer: "
                      f"{'no answer after 3 s' if silent else 'connection refused after 0 s'}. Check that the object "
                      "store runs there and that the address and port are right. (The wait is storage_timeout in "
                      "[settings], or LAKEHOUSE_STORAGE_TIMEOUT: 3 s.)"], proc.stderr
    assert seconds < 30
    assert "secret" not in proc.stderr + proc.stdout


REPO = Path(__file__).resolve().parents[2]


def test_a_prefect_api_that_does_not_answer_fails_within_the_timeout_naming_it(silent_port: int,
                                                                               tmp_path: Path) -> None:
    # given: the stack's environment (infra/env.sh) pointed at a Prefect API that accepts connections and never answers
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "LAKEHOUSE_PREFECT_PORT": str(silent_port),
           "LAKEHOUSE_PREFECT_TIMEOUT": "5", "LAKEHOUSE_RUN_DIR": str(tmp_path / "run"),
           "PREFECT_HOME": str(tmp_path / "prefect"), "DO_NOT_TRACK": "1"}
    api = f"http://127.0.0.1:{silent_port}/api"

    # when the operator runs a deployment through infra/run.sh
    began = time.monotonic()
    run = subprocess.run(["bash", "infra/run.sh", "medallion/tpch"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    seconds = time.monotonic() - began

    # then it fails within the timeout, naming the API, the setting and what to do
    assert run.returncode == 1, run.stdout + run.stderr
    assert seconds < 5 + 10, seconds
    assert f"the Prefect API at {api} did not answer within 5s (LAKEHOUSE_PREFECT_TIMEOUT)" in run.stderr
    assert "make up" in run.stderr

    # when Prefect's own CLI is used in the same environment (2 s a try, to keep the test short)
    began = time.monotonic()
    direct = subprocess.run(["bash", "-c", "source infra/env.sh && prefect deployment run medallion/tpch"], cwd=REPO,
                            env={**env, "LAKEHOUSE_PREFECT_TIMEOUT": "2"}, capture_output=True, text=True,
                            timeout=300)
    seconds = time.monotonic() - began

    # then it gives up too, within its three tries of 2 s and their backoff (Prefect's defaults: minutes)
    assert direct.returncode != 0
    assert seconds < 30, seconds

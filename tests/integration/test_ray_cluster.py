"""The pipeline on a multi-node Ray cluster, on S3 (a real cluster has no shared local disk): a head that takes no
tasks and two worker nodes, each a ``ray start --block`` process of its own on this machine, and a real S3 server
(moto) on loopback. ``lakehouse run`` joins it with ``RAY_ADDRESS`` and leaves the tables a local run leaves; with
the worker node running one of its tasks killed mid-run, Ray retries the task on the other node and the run still
ends with those tables."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import lakehouse
from examples.events.demo import generate
from lakehouse.settings import Settings
from lakehouse.storage import Storage
from tests.conftest import RAY
from tests.harness import assert_same_lake, cli, cli_env, contents, start, upload

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POINT = "worker:validate_file"
# This process's local Ray turned Ray's "cluster mode" off (loopback only), which refuses to join several nodes.
MULTI_NODE = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}


@dataclass
class Cluster:
    address: str
    head: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]]
    marks: Path  # the fail-point state directory every node's workers share

    def node_of(self, pid: int) -> subprocess.Popen[bytes]:
        """The worker node a process runs on (each node is a session of its own)."""
        sid = os.getsid(pid)
        return next(w for w in self.workers if w.pid == sid)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive_nodes(address: str) -> int:
    probe = "import ray; ray.init(address=%r, logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    out = subprocess.run([sys.executable, "-c", probe % address], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "RAY_ADDRESS": "", **MULTI_NODE})
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_options: dict[str, str]) -> Iterator[Cluster]:
    port = _free_port()
    address = f"127.0.0.1:{port}"
    temp = Path("/tmp") / f"lhc-{os.getpid()}"  # Ray's socket paths must stay short
    marks = tmp_path_factory.mktemp("failpoints")
    (marks / f"{POINT}.fired").write_text("")  # disarmed until a test removes it
    # Workers inherit their node's environment: the fail point is armed there, and S3 is reached with these.
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **s3_options,
           "LAKEHOUSE_FAILPOINTS": f"{POINT}=pauseonce", "LAKEHOUSE_FAILPOINTS_STATE": str(marks),
           "RAY_USAGE_STATS_ENABLED": "0", **MULTI_NODE}
    common = ["--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1", "--object-store-memory",
              str(200 << 20)]
    ray_cli = str(Path(sys.executable).with_name("ray"))
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        nodes.append(subprocess.Popen(
            [ray_cli, "start", "--head", "--port", str(port), "--num-cpus", "0", "--temp-dir", str(temp),
             "--include-dashboard", "false", *common], env=env, start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 120
        while _alive_nodes(address) < 1:
            assert nodes[0].poll() is None and time.monotonic() < deadline, "the head node did not start"
            time.sleep(1)
        for joined in (2, 3):  # one at a time: two nodes starting at once on one machine stall each other
            nodes.append(subprocess.Popen([ray_cli, "start", "--address", address, "--num-cpus", "1", *common],
                                          env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            while _alive_nodes(address) < joined:
                assert time.monotonic() < deadline, "the worker nodes did not join"
                time.sleep(1)
        yield Cluster(address, nodes[0], nodes[1:], marks)
    finally:
        for node in reversed(nodes):
            _kill_session(node.pid)
        shutil.rmtree(temp, ignore_errors=True)


def _kill_session(sid: int) -> None:
    """Every process of a node's session (``ray start`` leaves its GCS and raylet running on a signal to it alone)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _sid(int(p.name)) == sid]
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if alive and sig == signal.SIGTERM:
            time.sleep(3)


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


@pytest.fixture(scope="module")
def reference(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """Events landed, and the tables a local run gives."""
    raw = tmp_path_factory.mktemp("raw")
    generate(Storage(str(raw)), days=3, users=60, events_per_day=300, products=15, seed=5)
    local = raw.parent / "local"
    shutil.copytree(raw / "raw", local / "raw")
    assert lakehouse.run(Settings(root=str(local), ray=RAY, pipeline="events")).ok
    return raw, contents(local)


def landed(cluster: Cluster, reference: tuple[Path, dict[str, object]], s3_options: dict[str, str], tmp_path: Path,
           prefix: str) -> tuple[str, dict[str, str], dict[str, object]]:
    """The reference's raw files under ``s3://lake/<prefix>``, the environment of a CLI joining the cluster, and the
    tables a local run gave."""
    raw, wanted = reference
    root = f"s3://lake/{prefix}"
    upload(raw, root, s3_options)
    return root, cli_env(tmp_path, ray_address=cluster.address, **s3_options, **MULTI_NODE), wanted


def test_the_pipeline_on_a_three_node_cluster_and_s3_equals_a_local_run(
    cluster: Cluster, reference: tuple[Path, dict[str, object]], s3_options: dict[str, str], tmp_path: Path
) -> None:
    root, env, wanted = landed(cluster, reference, s3_options, tmp_path, "cluster")

    done = cli("run", "--root", root, "--pipeline", "events", env=env, timeout=600)

    assert done.returncode == 0, done.stdout + done.stderr
    assert_same_lake(contents(root, s3_options), wanted)  # type: ignore[arg-type]


def test_a_worker_node_killed_mid_run_costs_a_retry_not_the_result(
    cluster: Cluster, reference: tuple[Path, dict[str, object]], s3_options: dict[str, str], tmp_path: Path
) -> None:
    root, env, wanted = landed(cluster, reference, s3_options, tmp_path, "node-lost")
    fired = cluster.marks / f"{POINT}.fired"
    fired.unlink()  # armed: the first silver validation task waits there

    run = start("run", "--root", root, "--pipeline", "events", env=env)
    deadline = time.monotonic() + 300
    while not (fired.exists() and fired.read_text()):
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "no task reached the fail point"
        time.sleep(0.2)
    # the node running that task dies (raylet, object store and workers)
    node = cluster.node_of(int(fired.read_text()))
    _kill_session(node.pid)
    node.wait(timeout=30)
    out, err = run.communicate(timeout=600)

    assert run.returncode == 0, out + err
    assert_same_lake(contents(root, s3_options), wanted)  # type: ignore[arg-type]
    assert _alive_nodes(cluster.address) == 2

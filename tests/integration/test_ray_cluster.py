"""The pipeline on a multi-node Ray cluster, on S3 (a real cluster has no shared local disk): a head that takes no
tasks and two worker nodes, each a ``ray start --block`` process of its own on this machine, and a real S3 server
(moto) on loopback. ``lakehouse run`` joins it with ``RAY_ADDRESS`` and leaves the tables a local run leaves; with
the worker node running one of its tasks killed mid-run, Ray retries the task on the other node and the run still
ends with those tables."""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import lakehouse
from examples.events.demo import generate
from lakehouse.settings import Settings
from lakehouse.storage import Storage
from tests.conftest import RAY
from tests.harness import (
    MULTI_NODE,
    Cluster,
    alive_nodes,
    assert_same_lake,
    cli,
    cli_env,
    contents,
    kill_session,
    ray_cluster,
    start,
    upload,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.extended]

POINT = "worker:validate_file"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_options: dict[str, str]) -> Iterator[Cluster]:
    marks = tmp_path_factory.mktemp("failpoints")
    (marks / f"{POINT}.fired").write_text("")  # disarmed until a test removes it
    # Workers inherit their node's environment: the fail point is armed there, and S3 is reached with these.
    env = {**s3_options, "LAKEHOUSE_FAILPOINTS": f"{POINT}=pauseonce", "LAKEHOUSE_FAILPOINTS_STATE": str(marks)}
    with ray_cluster(env, workers=2) as found:
        yield dataclasses.replace(found, marks=marks)


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
    kill_session(node.pid)
    node.wait(timeout=30)
    out, err = run.communicate(timeout=600)

    assert run.returncode == 0, out + err
    assert_same_lake(contents(root, s3_options), wanted)  # type: ignore[arg-type]
    assert alive_nodes(cluster.address) == 2

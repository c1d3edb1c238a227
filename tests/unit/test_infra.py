"""The cluster configs in infra/cluster stay in step with the project: they parse, name the Ray the project pins,
and their deployments name the flow's real entrypoint and parameters (none of them can be started on this machine:
no Docker daemon, no Kubernetes; see the README's deployment guide)."""

from __future__ import annotations

import inspect
from pathlib import Path

import ray
import yaml

from flows.medallion import medallion

CLUSTER = Path(__file__).resolve().parents[2] / "infra" / "cluster"


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def test_the_ray_cluster_configs_run_the_ray_the_project_pins() -> None:
    cluster = load("raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert cluster["spec"]["rayVersion"] == ray.__version__
    pinned = [line for line in (CLUSTER.parents[1] / "constraints.txt").read_text().splitlines()
              if line.startswith("ray==")]
    assert pinned == [f"ray=={ray.__version__}"]
    assert "-c constraints.txt" in (CLUSTER / "Dockerfile").read_text()
    assert any("-c constraints.txt" in c for c in load("ray-cluster.yaml")["setup_commands"])


def test_the_kubernetes_deployments_name_the_flow_and_its_parameters() -> None:
    flow_params = set(inspect.signature(medallion.fn).parameters)
    for deployment in load("k8s-work-pool.yaml")["deployments"]:
        path, _, name = deployment["entrypoint"].partition(":")
        assert (CLUSTER.parents[1] / path).exists() and name == "medallion"
        assert set(deployment["parameters"]) <= flow_params, deployment["name"]
    local = yaml.safe_load((CLUSTER.parents[1] / "prefect.yaml").read_text())["deployments"]
    for deployment in local:
        assert set(deployment["parameters"]) <= flow_params, deployment["name"]


def test_the_compose_stack_keeps_secrets_out_of_its_file() -> None:
    compose = load("compose.yaml")
    assert set(compose["services"]) == {"postgres", "prefect-server", "deploy", "worker"}
    text = (CLUSTER / "compose.yaml").read_text()
    assert "POSTGRES_PASSWORD: ${PREFECT_DB_PASSWORD:?" in text
    env = compose["services"]["worker"]["environment"]
    assert env["AWS_SECRET_ACCESS_KEY"] == "${AWS_SECRET_ACCESS_KEY:-}"

"""Shared fixtures: one bounded local Ray for the session, and TPC-H data landed once per session."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lakehouse.settings import RaySettings, Settings

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray on loopback only (see engine.py)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# moto's server (werkzeug) logs every request it serves at INFO: thousands of lines a run on an s3:// root
logging.getLogger("werkzeug").setLevel(logging.WARNING)

RAY = RaySettings(num_cpus=2, object_store_bytes=512 << 20)
# The default gate fails a batch with more than 5% of its rows quarantined. Tests of what quarantine holds land small
# batches that are mostly bad on purpose: they loosen it, as a deployment would, with this one setting.
ANY_SHARE = {"*": 1.0}


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A real local Ray, started once for the session (a start costs seconds) and stopped at the end."""
    from lakehouse import engine

    temp = tmp_path_factory.mktemp("ray")
    # Ray's socket paths must stay short: use a short private dir rather than pytest's deep tmp path.
    short = Path("/tmp") / f"lhray-{os.getpid()}"
    short.mkdir(exist_ok=True)
    with engine.ray_session(RaySettings(num_cpus=2, object_store_bytes=512 << 20, temp_dir=str(short))):
        yield
    shutil.rmtree(short, ignore_errors=True)
    del temp


@pytest.fixture(scope="session")
def ray_address(ray_session: None) -> str:
    """The address of the session's Ray, for ``lakehouse`` subprocesses to join (``RAY_ADDRESS``) rather than start and
    stop one of their own, which costs 5-10 s a run here. A fail point inside a worker needs the subprocess's own Ray:
    only the workers a process starts inherit its environment, where fail points are armed."""
    import ray

    from lakehouse import engine

    engine.ensure_ray()
    return str(ray.get_runtime_context().gcs_address)


@pytest.fixture(scope="session")
def tpch_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TPC-H SF 0.01, first 8 order months, landed once per session; copy it before landing more into it."""
    from examples.tpch.demo import generate
    from lakehouse.storage import Storage

    root = tmp_path_factory.mktemp("tpch-landed")
    generate(Storage(str(root)), scale_factor=0.01, months=8)
    return root / "raw"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(root=str(tmp_path / "lake"), ray=RAY, target_file_rows=1_000_000)


@dataclass(frozen=True)
class Lake:
    """A lakehouse root with TPC-H landed and processed by one pipeline run."""

    root: Path
    settings: Settings
    report: Any

    @property
    def raw(self) -> Path:
        return self.root / "raw"


@pytest.fixture(scope="session")
def tpch_lake(ray_session: None, tpch_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """One full pipeline run over a copy of ``tpch_raw``, shared read-only; copy it (``lake_copy``) to change it."""
    import lakehouse

    root = tmp_path_factory.mktemp("tpch-lake")
    shutil.copytree(tpch_raw, root / "raw")
    settings = Settings(root=str(root), ray=RAY, target_file_rows=1_000_000)
    report = lakehouse.run(settings)
    assert report.ok, report.error
    return Lake(root=root, settings=settings, report=report)


@pytest.fixture
def lake_copy(tpch_lake: Lake, tmp_path: Path) -> Callable[[], Lake]:
    """A factory of private copies of the shared processed lake (raw files and Delta tables), to land more into."""

    def make() -> Lake:
        root = tmp_path / f"lake-{len(list(tmp_path.glob('lake-*')))}"
        shutil.copytree(tpch_lake.root, root)
        return Lake(root=root, settings=tpch_lake.settings.with_root(str(root)), report=tpch_lake.report)

    return make


# A drop with a malformed line (bronze quarantine) and a rule failure (silver quarantine), so runs over it commit to
# quarantine tables too.
BAD_ORDERS = (
    "o_orderkey,o_custkey,o_orderstatus,o_totalprice,o_orderdate,o_orderpriority,o_clerk,o_shippriority,o_comment\n"
    "9000001,1,O,100.50,1992-02-10,1-URGENT,Clerk#000000001,0,a fine order\n"
    "9000002,1,O,not enough fields\n"
    "9000003,1,O,-5.00,1992-02-11,1-URGENT,Clerk#000000001,0,a negative price\n"
)


@pytest.fixture(scope="session")
def landed_raw(tpch_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tpch_raw`` plus one bad orders file; copy it (``landed``) before use."""
    root = tmp_path_factory.mktemp("landed")
    shutil.copytree(tpch_raw, root / "raw")
    (root / "raw/orders/late").mkdir()
    (root / "raw/orders/late/bad.csv").write_text(BAD_ORDERS)
    return root / "raw"


@pytest.fixture
def landed(landed_raw: Path, tmp_path: Path) -> Path:
    """A root with ``landed_raw`` landed and nothing processed."""
    root = tmp_path / "landed"
    shutil.copytree(landed_raw, root / "raw")
    return root


@dataclass(frozen=True)
class Clean:
    """The tables of one clean run over ``landed_raw``: contents and versions."""

    tables: Any
    versions: dict[str, int | None]


@pytest.fixture(scope="session")
def clean(ray_session: None, landed_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Clean:
    import lakehouse
    from tests.harness import contents, versions

    root = tmp_path_factory.mktemp("clean")
    shutil.copytree(landed_raw, root / "raw")
    assert lakehouse.run(Settings(root=str(root), ray=RAY)).ok
    return Clean(tables=contents(root), versions=versions(root))


@pytest.fixture(scope="module")
def s3_options() -> Iterator[dict[str, str]]:
    """A real S3-compatible HTTP server (moto) on loopback with a bucket ``lake``; the deltalake-style options."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    opts = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    client.create_bucket(Bucket="lake")
    yield opts
    server.stop()

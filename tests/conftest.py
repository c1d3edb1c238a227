"""Shared fixtures: one bounded local Ray for the session, and TPC-H data landed once per session."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from lakehouse.settings import RaySettings, Settings

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

RAY = RaySettings(num_cpus=2, object_store_bytes=512 << 20)


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
def tpch_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TPC-H SF 0.01, first 8 order months, landed once per session; copy it before landing more into it."""
    from lakehouse.demo import generate
    from lakehouse.storage import Storage

    root = tmp_path_factory.mktemp("tpch-landed")
    generate(Storage(str(root)), scale_factor=0.01, months=8)
    return root / "raw"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(root=str(tmp_path / "lake"), ray=RAY, target_file_rows=1_000_000)

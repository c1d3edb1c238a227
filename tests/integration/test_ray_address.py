"""A run pointed at a Ray cluster address where nothing answers fails within the connect timeout, naming the address
and what to check (Ray itself would retry for many minutes), and leaves no table behind."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lakehouse.storage import Storage
from lakehouse.table import TableRef, snapshot

pytestmark = pytest.mark.integration


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens there


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

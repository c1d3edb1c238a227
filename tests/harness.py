"""Running ``lakehouse`` as a real subprocess, a multi-node Ray cluster on this machine, and comparing whole lakes
table by table."""

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

import polars as pl
from polars.testing import assert_frame_equal

from lakehouse.storage import Storage
from lakehouse.table import list_tables, snapshot

LAYERS = ("bronze", "silver", "gold", "quarantine")
# Columns that say when or by which run a row was written: they differ between two runs over the same data.
VOLATILE = ("_ingested_at", "_run_id", "_quarantined_at")


def cli_env(tmp: Path, *, ray_address: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a ``lakehouse`` subprocess: its own bounded local Ray, or with ``ray_address`` the session's
    (the ``ray_address`` fixture), and no failpoints unless given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKEHOUSE_") and k != "RAY_ADDRESS"}
    env.update(LAKEHOUSE_RAY_CPUS="2", LAKEHOUSE_RAY_OBJECT_STORE_BYTES=str(256 << 20))
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str], timeout: float = 300, cwd: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lakehouse.ops.cli", *args], env=env, capture_output=True, text=True, timeout=timeout,
        cwd=cwd,
    )


def start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lakehouse.ops.cli", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


# A local Ray that this process started turned Ray's "cluster mode" off (loopback only), which refuses several nodes.
MULTI_NODE = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}


@dataclass
class Cluster:
    """A Ray cluster of ``ray start --block`` processes, each node a session of its own."""

    address: str
    head: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]]
    marks: Path | None = None  # a fail-point state directory the nodes' workers share, if a test armed one

    def node_of(self, pid: int) -> subprocess.Popen[bytes]:
        """The worker node a process runs on."""
        sid = os.getsid(pid)
        return next(w for w in self.workers if w.pid == sid)


@contextlib.contextmanager
def ray_cluster(env: dict[str, str], *, workers: int = 2, cpus: int = 1,
                object_store_bytes: int = 200 << 20) -> Iterator[Cluster]:
    """A head that takes no tasks (it only runs drivers' scheduling) and ``workers`` nodes of ``cpus`` CPUs, on this
    machine; ``env`` reaches every node's workers (S3 settings, fail points). Stopped, every process, at the end."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    address = f"127.0.0.1:{port}"
    temp = Path("/tmp") / f"lhc-{os.getpid()}-{port}"  # Ray's socket paths must stay short
    node_env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_USAGE_STATS_ENABLED": "0",
                **MULTI_NODE, **env}
    common = ["--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1", "--object-store-memory",
              str(object_store_bytes)]
    ray_cli = str(Path(sys.executable).with_name("ray"))
    nodes: list[subprocess.Popen[bytes]] = []

    def node(*args: str) -> None:
        nodes.append(subprocess.Popen([ray_cli, "start", *args, *common], env=node_env, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    try:
        node("--head", "--port", str(port), "--num-cpus", "0", "--temp-dir", str(temp), "--include-dashboard", "false")
        deadline = time.monotonic() + 120
        for joined in range(1, workers + 2):  # one at a time: two nodes starting at once on one machine stall
            if joined > 1:
                node("--address", address, "--num-cpus", str(cpus))
            while alive_nodes(address) < joined:
                assert nodes[0].poll() is None and time.monotonic() < deadline, f"{joined - 1} of the nodes started"
                time.sleep(1)
        yield Cluster(address, nodes[0], nodes[1:])
    finally:
        for n in reversed(nodes):
            kill_session(n.pid)
        shutil.rmtree(temp, ignore_errors=True)


def alive_nodes(address: str) -> int:
    """How many nodes of the cluster at ``address`` are alive (asked from a process of its own)."""
    probe = "import ray; ray.init(address=%r, logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    out = subprocess.run([sys.executable, "-c", probe % address], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "RAY_ADDRESS": "", **MULTI_NODE})
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0


def kill_session(sid: int) -> None:
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


def upload(raw: Path, root: str, options: dict[str, str]) -> None:
    """Every file under ``raw`` (a root holding ``raw/...``) copied to the same place under ``root`` (``s3://...``)."""
    storage = Storage(root, tuple(sorted(options.items())))
    for path in sorted((raw / "raw").rglob("*")):
        if path.is_file():
            storage.write_bytes_atomic(path.relative_to(raw).as_posix(), path.read_bytes())


def versions(root: Path | str, options: dict[str, str] | None = None) -> dict[str, int | None]:
    storage = Storage(str(root), tuple(sorted((options or {}).items())))
    return {str(r): snapshot(storage, r).version for r in list_tables(storage, LAYERS)}


def contents(root: Path | str, options: dict[str, str] | None = None) -> dict[str, pl.DataFrame]:
    """Every data table's rows (bronze, silver, gold, quarantine), sorted, without the run-specific columns; ``root``
    may be ``s3://...``, reached with deltalake-style ``options``."""
    storage = Storage(str(root), tuple(sorted((options or {}).items())))
    found = {}
    for ref in list_tables(storage, LAYERS):
        df = pl.read_delta(storage.uri(ref.rel), storage_options=options)
        df = df.drop([c for c in VOLATILE if c in df.columns])
        keys = [c for c, t in df.schema.items() if not t.is_float()]
        found[str(ref)] = df.select(sorted(df.columns)).sort(sorted(keys))
    return found


def assert_same_lake(actual: dict[str, pl.DataFrame], wanted: dict[str, pl.DataFrame]) -> None:
    """Same tables with the same rows; sums may differ in the last bits (partial aggregates combine in any order)."""
    assert sorted(actual) == sorted(wanted)
    for name, frame in wanted.items():
        assert actual[name].height == frame.height, f"{name}: {actual[name].height} rows, expected {frame.height}"
        try:
            assert_frame_equal(actual[name], frame, rel_tol=1e-9, abs_tol=1e-6)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None

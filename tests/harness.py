"""Running ``lakehouse`` as a real subprocess, and comparing whole lakes table by table."""

from __future__ import annotations

import os
import subprocess
import sys
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

"""Ray's session: started lazily inside :func:`ray_session` (never at import time), bounded by the settings, or joined
at ``RaySettings.address``; stopped at the end of the block when this process started it."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from lakehouse.errors import ConfigError
from lakehouse.settings import RaySettings


@contextlib.contextmanager
def ray_session(settings: RaySettings) -> Iterator[None]:
    """Make Ray available for the duration of the block, started on first use and stopped at the end.

    Ray starts lazily (a local instance bounded by ``settings``, or joins ``settings.address``), so a run with nothing
    to do never pays for it. Nested sessions, or a Ray someone else started, are reused and left running.
    """
    if _session["active"] or _ray_running():
        yield
        return
    _session.update(active=True, settings=settings, started=False)
    try:
        yield
    finally:
        started = _session["started"]
        _session.update(active=False, settings=None, started=False)
        if started:
            import ray

            ray.shutdown()


_session: dict[str, Any] = {"active": False, "settings": None, "started": False, "start_seconds": 0.0}


def _ray_running() -> bool:
    # ``ray`` may be in sys.modules half imported (another thread, a stage beside this one, is importing it)
    initialized = getattr(sys.modules.get("ray"), "is_initialized", None)
    return bool(initialized is not None and initialized())


def cluster_cpus() -> int | None:
    """The CPUs of the cluster this process is connected to; None while Ray is not started (nothing starts it here)."""
    if not _ray_running():
        return None
    import ray

    return int(ray.cluster_resources().get("CPU", 0))


_starting = threading.Lock()  # stages that run at once may both be first to need Ray


def ensure_ray() -> None:
    if _ray_running():
        return
    with _starting:
        if not _ray_running():
            _start()


def _start() -> None:
    settings: RaySettings | None = _session["settings"]
    if settings is None:
        raise ConfigError("Ray is not available here: run engine work inside engine.ray_session(...)")
    began = time.monotonic()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not settings.address:
        # Ray 2.60 turns a node IP of 127.0.0.1 into the external interface's address (resolve_ip_for_localhost)
        # unless "cluster mode" is off; off, the local instance and its workers listen on loopback only. Ray reads
        # this when first imported, so it is set before the import.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(settings.code_paths)}} if settings.code_paths else None
    if settings.address:
        _answers(settings.address, settings.connect_timeout)
        try:
            ray.init(address=settings.address, log_to_driver=False, logging_level=logging.WARNING,
                     runtime_env=runtime_env)
        except ConnectionError as e:  # something answered, but not a Ray cluster Ray could join
            raise ConfigError(f"cannot join the Ray cluster at {settings.address} (RAY_ADDRESS, or address in [ray] of "
                              f"lakehouse.toml): {e}. Check that it is a Ray cluster's address, of the Ray version "
                              "installed here") from e
    else:
        temp_dir = settings.temp_dir or os.path.join(tempfile.gettempdir(), f"lakehouse-ray-{os.getpid()}")
        ray.init(
            address="local",
            num_cpus=settings.num_cpus,
            object_store_memory=settings.object_store_bytes,
            include_dashboard=False,
            _temp_dir=temp_dir,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            logging_level=logging.WARNING,
            runtime_env=runtime_env,
        )
    _session["started"] = True
    _session["start_seconds"] += time.monotonic() - began


def _answers(address: str, timeout: float) -> None:
    """Fail within ``timeout`` seconds, naming ``address``, when nothing accepts a connection there: ``ray.init``
    itself retries an absent cluster for many minutes ("Failed to connect to GCS ... within 5 seconds", 20 times). The
    address is a cluster's GCS (``host:6379``) or, with ``ray://``, its Ray Client server (``host:10001``); ``auto``
    (the cluster this machine runs) is left to Ray."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if target in ("auto", "local") or not host or not port.isdigit():
        return
    began = time.monotonic()
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return
    except OSError as e:
        waited = time.monotonic() - began
        why = "nothing answered" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__).lower()
        port_is = "its Ray Client port (10001)" if address.startswith("ray://") else "its GCS port (6379 by default)"
        raise ConfigError(
            f"no Ray cluster answers at {address} (RAY_ADDRESS, or address in [ray] of lakehouse.toml): {why} after "
            f"{waited:.0f} s. Check that the cluster is up there (`ray status` on its head), that the port is "
            f"{port_is} and that no firewall is in between; unset RAY_ADDRESS to run on a local Ray. (The wait is "
            f"connect_timeout in [ray], or LAKEHOUSE_RAY_CONNECT_TIMEOUT: {timeout:g} s.)") from e


def start_seconds() -> float:
    """Seconds this process has spent starting Ray (stages report it, so a first stage does not look slow)."""
    return float(_session["start_seconds"])

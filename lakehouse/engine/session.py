"""Ray's session: started lazily inside :func:`ray_session` (never at import time), bounded by the settings, or joined
at ``RaySettings.address``; stopped at the end of the block when this process started it."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
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
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def ensure_ray() -> None:
    if _ray_running():
        return
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
        ray.init(address=settings.address, log_to_driver=False, logging_level=logging.WARNING,
                 runtime_env=runtime_env)
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


def start_seconds() -> float:
    """Seconds this process has spent starting Ray (stages report it, so a first stage does not look slow)."""
    return float(_session["start_seconds"])

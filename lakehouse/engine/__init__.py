"""Ray: the one home of ``ray``. The session (:mod:`.session`: started on first use inside :func:`ray_session`, never
at import time) and the few ways work goes onto workers (:mod:`.tasks`)."""

from lakehouse.engine.session import cluster_cpus, ensure_ray, ray_session, start_seconds
from lakehouse.engine.tasks import TASK_RETRIES, Done, broadcast, fetch, map_items, map_reduce, observed, original

__all__ = [
    "TASK_RETRIES",
    "Done",
    "broadcast",
    "cluster_cpus",
    "ensure_ray",
    "fetch",
    "map_items",
    "map_reduce",
    "observed",
    "original",
    "ray_session",
    "start_seconds",
]

"""Ray: the one home of ``ray``. Starting and stopping it, and the few ways the engine puts work on workers.

* :func:`run_tasks`: one Ray Data task per item (a file, a partition), each returning an Arrow table; used for reads
  and for partition-aligned work. Only small metadata tables come back to the driver (:func:`collect`).
* :func:`combine`: the final step of a combiner-style aggregation: the partial aggregates are coalesced into one
  block on a worker (no hash shuffle) and finished there.
* :func:`broadcast` / :func:`fetch`: a small lookup table computed on a worker, kept in the object store and read
  once per worker process, for joins inside ``map_batches``.

Ray is never started at import time; inside :func:`ray_session` it starts on first use (or joins ``address``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from lakehouse import faults
from lakehouse.errors import ConfigError, LakehouseError
from lakehouse.settings import RaySettings

_fetched: dict[str, Any] = {}
# A task whose worker process dies (OOM killer, a lost node) is retried this many times, then the stage fails. Ray
# Data's default is to retry such tasks forever, which turns a worker that always dies into a run that never ends.
TASK_RETRIES = 3


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


def _ensure_ray() -> None:
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
    _quiet_data_context()
    _session["start_seconds"] += time.monotonic() - began


def start_seconds() -> float:
    """Seconds this process has spent starting Ray (stages report it, so a first stage does not look slow)."""
    return float(_session["start_seconds"])


def _quiet_data_context() -> None:
    import ray.data

    # Our stages log their own summaries and re-raise worker errors with their context (collect); Ray Data's own
    # per-dataset lines and error dumps would only repeat them (its log files keep everything). Ray Data configures
    # its loggers when imported, so this comes after the import.
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)

    ctx = ray.data.DataContext.get_current()
    # Our errors carry their table/file context; without this Ray Data replaces them by a UserCodeException whose
    # cause is lost on the way back to the driver.
    ctx.raise_original_map_exception = True
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def run_tasks(
    items: list[dict[str, Any]],
    fn: Callable[..., Any],
    *,
    fn_kwargs: dict[str, Any] | None = None,
    reports: bool = False,
) -> Any:
    """A lazy Ray Dataset over ``items``; ``fn(item, **fn_kwargs)`` runs on a worker and returns a table."""
    _ensure_ray()
    import ray
    import ray.data

    rows = [{"item": json.dumps(item, default=str)} for item in items]
    # A few items per task: Ray Data's per-task cost (~0.1 s here) would otherwise rival the work on small files,
    # while 4 tasks per CPU still leaves room to balance uneven items.
    cpus = int(ray.cluster_resources().get("CPU", 1))
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * cpus)))
    with _bounded_retries() as remote_args:
        return ds.map_batches(
            _apply_each,  # type: ignore[arg-type]
            batch_size=1,
            batch_format="pyarrow",
            fn_kwargs={"fn": fn, "fn_kwargs": fn_kwargs or {}, "reports": reports},
            **remote_args,
        )


@contextlib.contextmanager
def _bounded_retries() -> Iterator[dict[str, Any]]:
    """Remote args that bound retries of tasks whose worker died. Ray 2.60 has no named parameter for this and warns
    that ``ray_remote_args`` goes away in 2.64 (pyproject keeps Ray below it); the warning is silenced here."""
    from ray.util.annotations import RayDeprecationWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RayDeprecationWarning, message=".*ray_remote_args")
        yield {"max_retries": TASK_RETRIES}


def _apply_each(
    batch: pa.Table, fn: Callable[..., Any], fn_kwargs: dict[str, Any], reports: bool = False
) -> pa.Table:
    faults.point(f"worker:{fn.__name__}")
    if reports:  # typed reports: each item's list of report objects, pickled
        found = [r for item in batch.column("item").to_pylist() for r in fn(json.loads(item), **fn_kwargs)]
        return pa.table({"reports": pa.array([pickle.dumps(found)], pa.binary())})
    tables = [fn(json.loads(item), **fn_kwargs) for item in batch.column("item").to_pylist()]
    return pa.concat_tables(tables) if len(tables) != 1 else tables[0]


def map_items(items: list[dict[str, Any]], fn: Callable[..., list[Any]], *,
              fn_kwargs: dict[str, Any] | None = None) -> list[Any]:
    """Run ``fn(item, **fn_kwargs)`` for each item on workers and return every report the calls returned (each call
    returns a list of small, picklable report objects; data stays on the workers)."""
    if not items:
        return []
    found: list[Any] = []
    for row in collect(run_tasks(items, fn, fn_kwargs=fn_kwargs, reports=True)):
        found += pickle.loads(row["reports"])
    return found


def combine(ds: Any, fn: Callable[..., pa.Table], *, fn_kwargs: dict[str, Any] | None = None) -> Any:
    """Coalesce all blocks of ``ds`` into one (no shuffle) and apply ``fn(table, **fn_kwargs)`` to it on a worker."""
    with _bounded_retries() as remote_args:
        return ds.repartition(1).map_batches(
            fn, batch_size=None, batch_format="pyarrow", fn_kwargs=fn_kwargs or {}, zero_copy_batch=True,
            **remote_args,
        )


def collect(ds: Any) -> list[dict[str, Any]]:
    """Run ``ds`` and return its rows; only for small metadata results. Errors of ours are re-raised as such."""
    try:
        return list(ds.take_all())
    except Exception as e:  # Ray wraps worker errors; surface ours with their context
        ours = _find_ours(e)
        if ours is not None:
            raise ours from e
        raise


def _find_ours(error: BaseException | None) -> LakehouseError | None:
    """Our error inside Ray's wrappers (``RayTaskError.cause``, ``UserCodeException.__cause__``, ...), if any."""
    queue, seen = [error], set()
    while queue:
        e = queue.pop(0)
        if e is None or id(e) in seen:
            continue
        cause = getattr(e, "cause", None)
        if isinstance(cause, LakehouseError):
            # A RayTaskError is also an instance of its cause's class, but renders as the whole remote traceback.
            return cause
        if isinstance(e, LakehouseError):
            return e
        seen.add(id(e))
        queue += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def original(error: BaseException) -> BaseException:
    """The exception a task raised, out of Ray's wrapper (``RayTaskError`` renders as the whole remote traceback)."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


def broadcast(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Compute ``fn(*args, **kwargs)`` on a worker and keep the result in the object store; returns its ref."""
    _ensure_ray()
    import ray

    return ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(fn).remote(*args, **kwargs)


def fetch(ref: Any) -> Any:
    """The value of a broadcast ref, read once per worker process."""
    import ray

    key = ref.hex()
    if key not in _fetched:
        if len(_fetched) > 16:
            _fetched.clear()
        _fetched[key] = ray.get(ref)
    return _fetched[key]

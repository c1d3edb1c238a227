"""The few ways the engine puts work on Ray workers.

* :func:`map_items`: ``fn(item)`` for each item (a file, a partition, a group of keys) in Ray tasks, each call
  returning small typed reports (dataclasses: the files it wrote, counts); the data stays on the workers and in the
  files. What every stage runs on.
* :func:`run_tasks`: the same as a lazy Ray Dataset of Arrow tables, for a step that goes on in Ray Data
  (:func:`combine`); only small metadata tables come back to the driver (:func:`collect`).
* :func:`combine`: the final step of a combiner-style aggregation: the partial aggregates are coalesced into one
  block on a worker (no hash shuffle) and finished there.
* :func:`broadcast` / :func:`fetch`: a small lookup table computed on a worker, kept in the object store and read
  once per worker process, for joins inside ``map_batches``.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from lakehouse.engine.session import ensure_ray, quiet_data_context
from lakehouse.errors import LakehouseError
from lakehouse.ops import faults

_fetched: dict[str, Any] = {}
# A task whose worker process dies (OOM killer, a lost node) is retried this many times, then the stage fails. Ray
# Data's default is to retry such tasks forever, which turns a worker that always dies into a run that never ends.
TASK_RETRIES = 3


def run_tasks(
    items: list[dict[str, Any]],
    fn: Callable[..., Any],
    *,
    fn_kwargs: dict[str, Any] | None = None,
) -> Any:
    """A lazy Ray Dataset over ``items``; ``fn(item, **fn_kwargs)`` runs on a worker and returns a table."""
    ensure_ray()
    quiet_data_context()
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
            fn_kwargs={"fn": fn, "fn_kwargs": fn_kwargs or {}},
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
    batch: pa.Table, fn: Callable[..., Any], fn_kwargs: dict[str, Any]
) -> pa.Table:
    faults.point(f"worker:{fn.__name__}")
    tables = [fn(json.loads(item), **fn_kwargs) for item in batch.column("item").to_pylist()]
    return pa.concat_tables(tables) if len(tables) != 1 else tables[0]


def map_items(items: list[dict[str, Any]], fn: Callable[..., list[Any]], *,
              fn_kwargs: dict[str, Any] | None = None) -> list[Any]:
    """Run ``fn(item, **fn_kwargs)`` for each item on workers and return every report the calls returned, in the
    order of the items (each call returns a list of small, picklable report objects; data stays on the workers).

    Ray tasks of one CPU each, a few items per task (at most 4 tasks per CPU: a task's start would otherwise rival
    the work on small files, and 4 per CPU still balances uneven items). Plain tasks rather than a Ray Data pipeline:
    a pipeline costs ~0.1-0.5 s to plan and start (and seconds the first time in a process) where a task costs
    milliseconds (``bench/engine_overhead.py``), and a stage runs a few of them per table. A worker that dies is
    retried ``TASK_RETRIES`` times; an error of ours stops the call, the tasks still running are cancelled and waited
    for (so none writes after the stage has cleaned up), and it is raised with its context.
    """
    if not items:
        return []
    ensure_ray()
    import ray

    # Items travel as JSON, as they do through run_tasks: a task gets plain lists and strings, whatever path.
    encoded = [json.dumps(item, default=str) for item in items]
    cpus = int(ray.cluster_resources().get("CPU", 1))
    count = max(1, min(len(encoded), 4 * cpus))
    size = -(-len(encoded) // count)
    groups = [encoded[i:i + size] for i in range(0, len(encoded), size)]
    kwargs = ray.put(fn_kwargs or {})
    refs = [_remote_group().remote(group, fn, kwargs) for group in groups]
    try:
        done = ray.get(refs)
    except Exception as e:
        for r in refs:
            ray.cancel(r)
        ray.wait(refs, num_returns=len(refs), timeout=60)
        ours = _find_ours(e)
        if ours is not None:
            raise ours from e
        raise
    return [report for reports in done for report in reports]


_remote: dict[str, Any] = {}


def _remote_group() -> Any:
    """The Ray remote function that runs a group of items (defined once per process: each definition is exported to
    the cluster)."""
    if "group" not in _remote:
        import ray

        _remote["group"] = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(_run_group)
    return _remote["group"]


def _run_group(items: list[str], fn: Callable[..., list[Any]], fn_kwargs: dict[str, Any]) -> list[Any]:
    faults.point(f"worker:{fn.__name__}")
    return [report for item in items for report in fn(json.loads(item), **fn_kwargs)]


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
    ensure_ray()
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

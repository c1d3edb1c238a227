"""The few ways the engine puts work on Ray workers.

* :func:`run_tasks`: one Ray Data task per item (a file, a partition), each returning an Arrow table; used for reads
  and for partition-aligned work. Only small metadata tables come back to the driver (:func:`collect`).
* :func:`map_items`: the same, each call returning typed report objects (pickled), for stages whose reports are
  dataclasses.
* :func:`combine`: the final step of a combiner-style aggregation: the partial aggregates are coalesced into one
  block on a worker (no hash shuffle) and finished there.
* :func:`broadcast` / :func:`fetch`: a small lookup table computed on a worker, kept in the object store and read
  once per worker process, for joins inside ``map_batches``.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from lakehouse.engine.session import ensure_ray
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
    reports: bool = False,
) -> Any:
    """A lazy Ray Dataset over ``items``; ``fn(item, **fn_kwargs)`` runs on a worker and returns a table."""
    ensure_ray()
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

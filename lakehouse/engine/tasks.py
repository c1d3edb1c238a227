"""The few ways the engine puts work on Ray workers.

* :func:`map_items`: ``fn(item)`` for each item (a file, a partition, a group of keys) in Ray tasks, each call
  returning small typed reports (dataclasses: the files it wrote, counts); the data stays on the workers and in the
  files. What every stage runs on.
* :func:`map_reduce`: the same, then one more task over every result, which stay in the object store (a combiner
  step with no hash shuffle, the data never through the driver).
* :func:`broadcast` / :func:`fetch`: a small lookup table computed on a worker, kept in the object store and read
  once per worker process, for joins inside tasks.

Whoever runs a stage can hear how its steps go (:func:`observed`): as each group of items finishes on the workers,
a :class:`Done` says how many of the step's items are done and how many rows their reports count (the CLI draws
bars from it, the Prefect flow logs it). Only the driver hears it; the workers know nothing of it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

from lakehouse.engine.session import ensure_ray
from lakehouse.errors import LakehouseError
from lakehouse.ops import faults

log = logging.getLogger(__name__)
_fetched: dict[str, Any] = {}
# A task whose worker process dies (OOM killer, a lost node) is retried this many times, then the stage fails (retrying
# forever, Ray Data's default, turns a worker that always dies into a run that never ends).
TASK_RETRIES = 3


@dataclass(frozen=True)
class Done:
    """How one step of a stage (a map of ``step`` over items on workers) is going: ``items`` of ``total`` done, the
    rows their reports count (``rows``, else ``rows_in`` or ``raw_rows``; 0 for a step whose reports count none),
    ``seconds`` since it began."""

    step: str
    items: int
    total: int
    rows: int
    seconds: float

    @property
    def label(self) -> str:
        return self.step.removesuffix("_task").strip("_").replace("_", " ")


# Per context, not per process: stages that run at once (each in its own thread and context) hear their own steps.
_observers: contextvars.ContextVar[tuple[Callable[[Done], None], ...]] = contextvars.ContextVar("observers",
                                                                                               default=())


@contextmanager
def observed(observer: Callable[[Done], None]) -> Iterator[None]:
    """Tell ``observer`` how each step goes while the block runs (on the driver; an observer that raises is logged
    and never fails the step)."""
    token = _observers.set((*_observers.get(), observer))
    try:
        yield
    finally:
        _observers.reset(token)


def _tell(done: Done) -> None:
    for observer in _observers.get():
        try:
            observer(done)
        except Exception:
            log.warning("a progress observer failed", exc_info=True)


def _rows(reports: Any) -> int:
    if not isinstance(reports, list):
        return 0
    counted = (next((n for a in ("rows", "rows_in", "raw_rows") if isinstance(n := getattr(r, a, None), int)), 0)
               for r in reports)
    return sum(counted)


def map_items(items: list[dict[str, Any]], fn: Callable[..., list[Any]], *,
              fn_kwargs: dict[str, Any] | None = None) -> list[Any]:
    """Run ``fn(item, **fn_kwargs)`` for each item on workers and return every report the calls returned, in the
    order of the items (each call returns a list of small, picklable report objects; data stays on the workers).

    Ray tasks of one CPU each, a few items per task (at most 4 tasks per CPU: a task's start would otherwise rival
    the work on small files, and 4 per CPU still balances uneven items). Plain tasks rather than a Ray Data pipeline:
    a pipeline costs ~0.1-0.5 s to plan and start (and seconds the first time in a process) where a task costs
    milliseconds (``bench/engine_overhead.py``), and a stage runs a few of them per table. A worker that dies is
    retried ``TASK_RETRIES`` times; an error of ours stops the call: no further task is started, those running are
    waited for (so none writes after the stage has cleaned up), and it is raised with its context.
    """
    if not items:
        return []
    ensure_ray()
    done = _run_groups(items, fn, fn_kwargs)
    return [report for reports in done for report in reports]


def map_reduce(items: list[dict[str, Any]], fn: Callable[..., list[Any]], reduce: Callable[..., list[Any]], *,
               fn_kwargs: dict[str, Any] | None = None, reduce_kwargs: dict[str, Any] | None = None) -> list[Any]:
    """``fn(item, **fn_kwargs)`` for each item on workers, as :func:`map_items`, but what the calls return stays in
    the object store; then ``reduce(results, **reduce_kwargs)`` on one worker, given every call's results in the
    items' order, returns the reports. A combiner step with no hash shuffle: the data never goes through the driver.
    """
    ensure_ray()
    parts = _run_groups(items, fn, fn_kwargs, keep=True) if items else []
    final = _remote("reduce", _reduce).remote(reduce, reduce_kwargs or {}, *parts)
    [reports] = _wait_all([final])
    return list(reports)


def _run_groups(items: list[dict[str, Any]], fn: Callable[..., list[Any]], fn_kwargs: dict[str, Any] | None, *,
                keep: bool = False) -> list[Any]:
    """The items in groups on Ray tasks, at most one task in flight per CPU of the cluster; each group's result (with
    ``keep``, its ref, the result left in the object store), in the items' order.

    Tasks are started as others finish rather than all queued at once, so that on an error nothing is left to
    cancel: ``ray.cancel`` of a task whose start is in flight crashes the calling process in Ray 2.60 (a RAY_CHECK,
    "Tried to complete task that was not pending", ray-project/ray#54846), and a crashed driver is a crashed run.
    """
    import ray

    # Items travel as JSON: a task gets plain lists and strings, whatever path they took.
    encoded = [json.dumps(item, default=str) for item in items]
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    count = max(1, min(len(encoded), 4 * cpus))
    size = -(-len(encoded) // count)
    groups = [encoded[i:i + size] for i in range(0, len(encoded), size)]
    kwargs = ray.put(fn_kwargs or {})
    refs: list[Any] = []
    running: list[Any] = []  # what is waited on: the result, or with ``keep`` a marker returned beside it
    values: dict[Any, Any] = {}  # what finished tasks returned (reports, or markers), by what was waited on
    failed: BaseException | None = None
    sizes: dict[Any, int] = {}
    began, done, rows = time.monotonic(), 0, 0
    _tell(Done(fn.__name__, 0, len(encoded), 0, 0.0))

    def finish_one() -> BaseException | None:
        nonlocal running, done, rows
        ready, running = ray.wait(running, num_returns=1)
        try:
            values[ready[0]] = ray.get(ready[0])  # small: reports, or a marker
        except Exception as e:  # Ray wraps worker errors; _raise surfaces ours
            return e
        done += sizes[ready[0]]
        rows += _rows(values[ready[0]])
        _tell(Done(fn.__name__, done, len(encoded), rows, time.monotonic() - began))
        return None

    for group in groups:
        while len(running) >= cpus and failed is None:
            failed = finish_one()
        if failed is not None:
            break
        if keep:
            marker, ref = _remote("kept", _run_kept, num_returns=2).remote(group, fn, kwargs)
        else:
            marker = ref = _remote("group", _run_group).remote(group, fn, kwargs)
        refs.append(ref)
        running.append(marker)
        sizes[marker] = len(group)
    while running and failed is None:
        failed = finish_one()
    if failed is not None:
        if running:
            ray.wait(running, num_returns=len(running))
        _raise(failed)
    return refs if keep else [values[r] for r in refs]


def _wait_all(refs: list[Any]) -> list[Any]:
    """The values of ``refs``; on an error, the others are waited for (started tasks are never cancelled, see
    :func:`_run_groups`) and the error raised (:func:`_raise`)."""
    import ray

    try:
        return list(ray.get(refs))
    except Exception as e:
        ray.wait(refs, num_returns=len(refs))
        _raise(e)
        raise  # unreachable: _raise always raises


def _raise(error: BaseException) -> NoReturn:
    """Raise an error of ours found inside Ray's wrappers as itself, with its context; any other error as it is."""
    ours = _find_ours(error)
    if ours is not None:
        raise ours from error
    raise error


_remotes: dict[str, Any] = {}


def _remote(name: str, fn: Callable[..., Any], num_returns: int = 1) -> Any:
    """``fn`` as a Ray remote function of one CPU with bounded retries, defined once per process (each definition is
    exported to the cluster)."""
    if name not in _remotes:
        import ray

        _remotes[name] = ray.remote(num_cpus=1, max_retries=TASK_RETRIES, num_returns=num_returns)(fn)
    return _remotes[name]


def _run_group(items: list[str], fn: Callable[..., list[Any]], fn_kwargs: dict[str, Any]) -> list[Any]:
    faults.point(f"worker:{fn.__name__}")
    return [result for item in items for result in fn(json.loads(item), **fn_kwargs)]


def _run_kept(items: list[str], fn: Callable[..., list[Any]], fn_kwargs: dict[str, Any]) -> tuple[None, list[Any]]:
    """:func:`_run_group` with a marker beside the result: the driver waits on the marker, so the result (data a reduce
    reads) never comes to it. An error is both return values."""
    return None, _run_group(items, fn, fn_kwargs)


def _reduce(reduce: Callable[..., list[Any]], kwargs: dict[str, Any], *parts: list[Any]) -> list[Any]:
    faults.point(f"worker:{reduce.__name__}")
    return reduce([result for part in parts for result in part], **kwargs)


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

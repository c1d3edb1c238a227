"""Fail points: named places where a test can make a real run crash, to prove what a crash leaves behind.

A fail point is armed through ``LAKEHOUSE_FAILPOINTS`` (the one channel that reaches a ``lakehouse run`` subprocess
and the Ray workers it starts), e.g. ``silver.orders:before_commit=kill;worker:merge_partition=raise``:

* ``kill``: SIGKILL the current process at that point (the driver: the whole run dies; a Ray worker: Ray sees a
  dead worker);
* ``raise``: raise :class:`InjectedFault` there (not one of our errors, so nothing retries it);
* ``killonce``: SIGKILL the first process that gets there, and no other (a worker that dies once, which Ray retries);
  needs ``LAKEHOUSE_FAILPOINTS_STATE``, a directory all processes share, to remember that it fired;
* ``pauseonce``: the first process that gets there writes its pid in ``<point>.fired`` there and waits until the
  test writes ``<point>.resume`` (a run held between its plan and its commit while something else commits).

The points (see the callers): ``<table>:before_commit`` after every file of the table's write is on storage and
before the Delta commit; ``<table>:after_commit`` right after it, before the next table; ``worker:<function>``
inside a Ray task, before it does its work. Unarmed (always, outside tests) a point costs one dict lookup.
"""

from __future__ import annotations

import functools
import os
import signal
import time

ENV = "LAKEHOUSE_FAILPOINTS"
STATE_ENV = "LAKEHOUSE_FAILPOINTS_STATE"
ACTIONS = ("kill", "killonce", "raise", "pauseonce")
PAUSE_SECONDS = 300.0  # a paused process waits at most this long for the test to resume it


class InjectedFault(RuntimeError):
    """Raised by a fail point armed with ``raise``."""


@functools.cache
def _armed(spec: str) -> dict[str, str]:
    points = {}
    for entry in filter(None, (e.strip() for e in spec.split(";"))):
        name, _, action = entry.rpartition("=")
        if action not in ACTIONS or not name:
            raise ValueError(f"{ENV}: bad entry {entry!r} (want <point>=kill|killonce|raise|pauseonce)")
        points[name] = action
    return points


def point(name: str) -> None:
    """Crash here if a test armed this point."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    action = _armed(spec).get(name)
    if action == "kill" or (action == "killonce" and _first(name)):
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        raise InjectedFault(f"fail point {name} was hit")
    elif action == "pauseonce" and _first(name):
        resume = os.path.join(os.environ[STATE_ENV], name.replace("/", "_") + ".resume")
        deadline = time.monotonic() + PAUSE_SECONDS
        while not os.path.exists(resume) and time.monotonic() < deadline:
            time.sleep(0.05)


def _first(name: str) -> bool:
    """True for the first process to reach ``name`` (an exclusive create of a marker file)."""
    marker = os.path.join(os.environ[STATE_ENV], name.replace("/", "_") + ".fired")
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:  # which process it was (a test may need to know its node)
        f.write(str(os.getpid()))
    return True

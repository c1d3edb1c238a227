"""What ``lakehouse run`` (and ``backfill``, ``quarantine replay``) prints while it runs: a line when each stage starts
and one when it ends, as it happens, written through at once so that a pipe, a log file or CI sees each line when it
is printed, not when the run is over. ``json``: one JSON object per finished stage, then one for the run (for
scripts); ``quiet``: nothing but the error, on stderr.

Within a stage, text mode shows how its steps go (the items of each step done on the workers, and their rows): bars
(rich) on a terminal, which go away when the stage ends; otherwise a plain line at most every ``every`` seconds, so a
log or CI shows a long stage moving and a short one not at all.

It is the run loop's ``call`` (:func:`lakehouse.running.runner.execute`): it runs each stage and says so; the run loop
still decides what a failure means.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Literal, TextIO

from lakehouse import engine
from lakehouse.engine import Done
from lakehouse.running.context import StageResult
from lakehouse.running.runner import RunReport, Stage

Mode = Literal["text", "json", "quiet"]
WIDTH = 34


class Progress:
    """Prints each stage as it starts and ends (``mode``), and the run's end (:meth:`done`)."""

    def __init__(self, mode: Mode = "text", out: TextIO | None = None, err: TextIO | None = None, *,
                 bars: bool | None = None, every: float = 10.0) -> None:
        self.mode = mode
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.began = time.monotonic()
        self.bars = _is_terminal(self.out) if bars is None else bars
        self.every = every
        self._live = threading.Lock()  # held by the stage showing bars: one live display at a time (rich's rule)

    def __call__(self, stage: Stage) -> StageResult:
        if self.mode == "text":
            self._print(f"{stage.label:<{WIDTH}} started")
        began = time.monotonic()
        try:
            with self._steps(stage.label):
                result = stage()
        except Exception as e:
            seconds = time.monotonic() - began
            if self.mode == "text":
                self._print(f"{stage.label:<{WIDTH}} {'failed':<9} after {seconds:.1f}s")
            elif self.mode == "json":
                self._print(json.dumps({"table": stage.table, "stage": stage.layer, "label": stage.label,
                                        "status": "failed", "seconds": round(seconds, 3), "error": str(e)}))
            raise
        self.finished(stage, result)
        return result

    def finished(self, stage: Stage, r: StageResult) -> None:
        if self.mode == "text":
            line = (f"{stage.label:<{WIDTH}} {r.status:<9} in={r.rows_in:<9} written={r.rows_written:<9} "
                    f"quarantined={r.rows_quarantined:<6} duplicate={r.rows_duplicate:<6} "
                    f"version={'' if r.version is None else r.version:<4} {r.seconds:6.1f}s")
            self._print(f"{line}  {r.message}" if r.message and r.status != "failed" else line)
        elif self.mode == "json":
            self._print(json.dumps({
                "table": r.table, "stage": stage.layer, "label": stage.label, "status": r.status,
                "rows_in": r.rows_in, "rows_written": r.rows_written, "rows_quarantined": r.rows_quarantined,
                "rows_duplicate": r.rows_duplicate, "version": r.version, "seconds": round(r.seconds, 3),
                "message": r.message}))

    def done(self, report: RunReport) -> int:
        """The run's last words: ``run ID done in``, or the error (on stderr); the exit code."""
        seconds = time.monotonic() - self.began
        if self.mode == "json":
            self._print(json.dumps({"run_id": report.run_id, "ok": report.ok, "seconds": round(seconds, 3),
                                    "error": None if report.error is None else str(report.error)}))
        if report.error is not None:
            print(f"error: {report.error}", file=self.err, flush=True)
            return 1
        if self.mode == "text":
            self._print(f"run {report.run_id} done in {seconds:.1f}s")
        return 0

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def _steps(self, label: str) -> Any:
        """While a stage runs: its steps as bars, or as a plain line now and then (text mode only)."""
        if self.mode != "text":
            return nullcontext()
        if self.bars and self._live.acquire(blocking=False):  # stages at once: the others print lines
            return _released(self._live, _bars(label, self.out))
        return engine.observed(Lines(label, self._print, self.every))


class Lines:
    """A step's progress as a plain line, at most every ``every`` seconds (none in a stage's first ``every``)."""

    def __init__(self, label: str, say: Callable[[str], None], every: float) -> None:
        self.label, self.say, self.every = label, say, every
        self.last = time.monotonic()

    def __call__(self, done: Done) -> None:
        now = time.monotonic()
        if now - self.last < self.every or not done.total:
            return
        self.last = now
        self.say(f"{self.label:<{WIDTH}} {done.label}: {done.items}/{done.total} ({100 * done.items // done.total}%)"
                 f"{f', {done.rows:,} rows' if done.rows else ''}, {done.seconds:.0f}s")


@contextmanager
def _bars(label: str, out: TextIO) -> Iterator[None]:
    """A bar per step of the stage while it runs (gone when it ends: the stage's line says how it went)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bars

    bars = Bars(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rows]}"),
                TimeElapsedColumn(), console=Console(file=out), transient=True)
    current: dict[str, Any] = {}

    def update(done: Done) -> None:
        rows = f"{done.rows:,} rows" if done.rows else ""
        if done.items == 0 or done.step not in current:
            current[done.step] = bars.add_task(f"{label} {done.label}", total=done.total, rows=rows)
        bars.update(current[done.step], completed=done.items, rows=rows)

    with bars, engine.observed(update):
        yield


@contextmanager
def _released(lock: threading.Lock, inner: Any) -> Iterator[None]:
    try:
        with inner:
            yield
    finally:
        lock.release()


def _is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False

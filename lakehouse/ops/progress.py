"""What ``lakehouse run`` (and ``backfill``, ``quarantine replay``) prints while it runs: a line when each stage starts
and one when it ends, as it happens, written through at once so that a pipe, a log file or CI sees each line when it
is printed, not when the run is over. ``json``: one JSON object per finished stage, then one for the run (for
scripts); ``quiet``: nothing but the error, on stderr.

It is the run loop's ``call`` (:func:`lakehouse.running.runner.execute`): it runs each stage and says so; the run loop
still decides what a failure means.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Literal, TextIO

from lakehouse.running.context import StageResult
from lakehouse.running.runner import RunReport, Stage

Mode = Literal["text", "json", "quiet"]
WIDTH = 34


class Progress:
    """Prints each stage as it starts and ends (``mode``), and the run's end (:meth:`done`)."""

    def __init__(self, mode: Mode = "text", out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.mode = mode
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.began = time.monotonic()

    def __call__(self, stage: Stage) -> StageResult:
        if self.mode == "text":
            self._print(f"{stage.label:<{WIDTH}} started")
        began = time.monotonic()
        try:
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

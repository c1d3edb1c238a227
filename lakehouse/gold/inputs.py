"""A gold table's inputs: each one's snapshot now, the version the table was last built from, and what changed.

A gold table records, per input, the version it was built from (app transaction
``lakehouse/gold.<table><-<layer>.<input>``). Comparing the input's files at that version with its files now gives
the files added and removed since, from the log alone; the planner maps those to the output partitions or keys to
rebuild.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lakehouse import table
from lakehouse.running.context import RunContext
from lakehouse.spec import Gold, Pipeline
from lakehouse.storage import Storage
from lakehouse.table import Snapshot, TableFile, TableRef

Partitions = set[tuple[str | None, ...]]


def ref(name: str) -> TableRef:
    return TableRef("gold", name)


def app_id(gold: str, source: TableRef) -> str:
    """The watermark of ``gold``'s input ``source`` (``lakehouse/gold.<table><-silver.orders``, as lakes keep it)."""
    return f"lakehouse/gold.{gold}<-{source}"


@dataclass(frozen=True)
class Input:
    """One input table of a gold table: its snapshot now and the version the gold table was last built from."""

    name: str
    snap: Snapshot
    mark: int | None

    @property
    def changed(self) -> bool:
        """Its version moved since the gold table was built from it (an input that does not exist gives nothing)."""
        if self.snap.version is None:
            return False
        return self.mark is None or self.mark < self.snap.version

    def diff(self, storage: Storage) -> tuple[list[TableFile], list[TableFile]] | None:
        """The files added and removed since the mark; None when there is no mark (everything is new)."""
        if self.mark is None:
            return None
        if not self.changed:
            return [], []
        before = table.snapshot(storage, self.snap.ref, version=self.mark)
        now_paths = {f.path for f in self.snap.files}
        old_paths = {f.path for f in before.files}
        added = [f for f in self.snap.files if f.path not in old_paths]
        removed = [f for f in before.files if f.path not in now_paths]
        return added, removed

    def changed_partitions(self, storage: Storage) -> Partitions | None:
        """Partitions whose files differ between the mark and now; None when everything must be considered. A new
        version that changed no file (one that only records a watermark) changes no partition."""
        found = self.diff(storage)
        if found is None:
            return None
        return {tuple(f.partition_values.get(c) for c in self.snap.partition_by) for f in [*found[0], *found[1]]}

    def files_changed(self, storage: Storage) -> bool:
        found = self.changed_partitions(storage)
        return found is None or bool(found)

    def files(self, partitions: Partitions | None = None) -> list[TableFile]:
        return self.snap.files_in(partitions)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.snap.files)


def inputs(ctx: RunContext, pipeline: Pipeline, spec: Gold) -> dict[str, Input]:
    """Every input of ``spec`` by the name the plan uses, with its mark (none on a full refresh)."""
    storage = ctx.storage
    found = {}
    for name in spec.inputs:
        layer, bare = pipeline.table_of(name)
        source = TableRef(layer, bare)
        snap = table.snapshot(storage, source)
        mark = None if ctx.full_refresh else table.txn_version(storage, ref(spec.name), app_id(spec.name, source))
        found[name] = Input(name=name, snap=snap, mark=mark)
    return found


def marks(spec: Gold, ins: dict[str, Input]) -> dict[str, int]:
    """The app transactions a build of ``spec`` from ``ins`` commits: each existing input's version."""
    return {app_id(spec.name, i.snap.ref): i.snap.version for i in ins.values() if i.snap.version is not None}


def versions(ins: dict[str, Input]) -> dict[str, int]:
    """The versions a build reads, by input table (``silver.orders``), for the run record."""
    return {str(i.snap.ref): i.snap.version for i in ins.values() if i.snap.version is not None}


def items(files: list[TableFile]) -> list[dict[str, Any]]:
    return [f.item() for f in files]

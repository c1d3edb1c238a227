"""Gold machinery: what changed in a gold table's inputs since it was built, and its one commit per run.

A gold table records, per input, the silver version it was built from (app transaction
``lakehouse/gold.<table><-silver.<input>``). Comparing the input's files at that version with its files now gives the
partitions that changed, from the log alone; builders rebuild the gold partitions those affect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from lakehouse import silver, table
from lakehouse.context import RunContext, StageResult
from lakehouse.files import DataFile
from lakehouse.spec import GoldSpec
from lakehouse.storage import Storage
from lakehouse.table import Snapshot, TableFile, TableRef

META = pa.schema([("file", pa.string())])


def ref(name: str) -> TableRef:
    return TableRef("gold", name)


def app_id(gold: str, source: str) -> str:
    return f"lakehouse/gold.{gold}<-silver.{source}"


@dataclass(frozen=True)
class Input:
    """One silver input of a gold table: its snapshot now and the version the gold table was last built from."""

    name: str
    snap: Snapshot
    mark: int | None

    @property
    def changed(self) -> bool:
        """Changed since the gold table was built from it (an input that does not exist has nothing to give)."""
        if self.snap.version is None:
            return False
        return self.mark is None or self.mark < self.snap.version

    def changed_partitions(self, storage: Storage) -> set[tuple[str | None, ...]] | None:
        """Partitions whose files differ between the mark and now; None when everything must be considered."""
        if self.mark is None:
            return None
        if not self.changed:
            return set()
        before = table.snapshot(storage, self.snap.ref, version=self.mark)
        now_paths = {f.path for f in self.snap.files}
        old_paths = {f.path for f in before.files}
        diff = [f for f in self.snap.files if f.path not in old_paths]
        diff += [f for f in before.files if f.path not in now_paths]
        return {tuple(f.partition_values.get(c) for c in self.snap.partition_by) for f in diff}

    def file_items(self, partitions: set[tuple[str | None, ...]] | None = None) -> list[dict[str, Any]]:
        files = self.snap.files_in(partitions)
        return [f.item() for f in files]


def inputs(ctx: RunContext, spec: GoldSpec) -> dict[str, Input]:
    storage = ctx.storage
    gold = ref(spec.name)
    found = {}
    for name in spec.inputs:
        snap = table.snapshot(storage, silver.ref(name))
        mark = None if ctx.full_refresh else table.txn_version(storage, gold, app_id(spec.name, name))
        found[name] = Input(name=name, snap=snap, mark=mark)
    return found


def versions(ins: dict[str, Input]) -> dict[str, int]:
    """The silver versions a build reads, by input table name (``silver.orders``)."""
    return {str(i.snap.ref): i.snap.version for i in ins.values() if i.snap.version is not None}


def up_to_date(ctx: RunContext, spec: GoldSpec, result: StageResult, ins: dict[str, Input]) -> StageResult:
    """Nothing changed in any input since the table was built: no work, no commit."""
    result.inputs = versions(ins)
    result.version = table.snapshot(ctx.storage, ref(spec.name)).version
    return result.finish("skipped", "up to date")


def commit(
    ctx: RunContext,
    spec: GoldSpec,
    result: StageResult,
    *,
    schema: pa.Schema,
    meta: list[dict[str, Any]],
    removes: list[TableFile],
    base: Snapshot,
    ins: dict[str, Input],
) -> StageResult:
    """Commit the files the builder's workers wrote (``meta`` rows) as one version carrying every input's mark."""
    adds = [DataFile.from_json(m["file"]) for m in meta if m["file"]]
    read = {name: i.snap.version for name, i in ins.items() if i.snap.version is not None}
    result.inputs = versions(ins)
    result.rows_written = sum(a.rows for a in adds)
    result.partitions = len({tuple(a.partition_values.items()) for a in adds})
    result.version = table.commit(
        ctx.storage,
        base,
        schema=schema,
        adds=adds,
        removes=removes,
        partition_by=(spec.partition_column,) if spec.partition_column else (),
        app_transactions={app_id(spec.name, n): v for n, v in read.items()},
        metadata={"run_id": ctx.run_id, "stage": "gold", "inputs": result.inputs},
    )
    return result.finish("committed")


def meta_table(files: list[DataFile]) -> pa.Table:
    rows = [{"file": f.to_json()} for f in files] or [{"file": ""}]
    return pa.Table.from_pylist(rows, schema=META)

"""What a silver table is: its name and app ids, its schema (the model's columns, lineage, the partition column), the
bronze files new since its watermark, and which partitions a lookback or a backfill's months reach."""

from __future__ import annotations

import datetime as dt
import json

import polars as pl
import pyarrow as pa

from lakehouse import bronze, table
from lakehouse.bronze import landed
from lakehouse.quality.validation import RowCheck, model_dtypes
from lakehouse.running.context import RunContext
from lakehouse.spec import Partitioning
from lakehouse.spec import Silver as SilverSpec
from lakehouse.storage import Storage
from lakehouse.storage.frames import arrow_type
from lakehouse.table import TableFile, TableRef

LINEAGE = ("_source_file", "_source_line", "_ingested_at")


def ref(name: str) -> TableRef:
    return TableRef("silver", name)


def app_id(name: str) -> str:
    return f"lakehouse/silver.{name}"


def replay_id(name: str) -> str:
    return f"lakehouse/replay.{name}"


def cdc_app_id(name: str) -> str:
    """The app transaction of change events applied to ``silver.<name>`` (see ``lakehouse.cdc``)."""
    return f"lakehouse/cdc.{name}"


def arrow_schema(spec: SilverSpec, extra: tuple[str, ...] = ()) -> pa.Schema:
    """Model columns with their types, ``extra`` columns (new in landed files, schema drift policy ``evolve``) as
    strings, bronze lineage, then the partition column (a time partitioning's; an identity partitioning's column is
    the model's own)."""
    fields = [(c, arrow_type(t)) for c, t in model_dtypes(spec.model).items()]
    fields += [(c, pa.string()) for c in extra]
    fields += [(n, bronze.LINEAGE.field(n).type) for n in LINEAGE]
    if spec.partition and spec.partition.time:
        fields.append((spec.partition.column, pa.date32()))
    return pa.schema(fields)


def cdc_reset(storage: Storage, spec: SilverSpec) -> dict[str, int]:
    """A table that change events were applied to loses them when this stage rewrites it from its snapshot: reset
    their watermark (-1) in the same commit, so the next change stage applies every event again."""
    applied = table.txn_version(storage, ref(spec.name), cdc_app_id(spec.name))
    return {cdc_app_id(spec.name): -1} if applied is not None else {}


def files_since(storage: Storage, source: table.Snapshot, mark: int | None) -> list[landed.NewRows]:
    """Bronze files with rows added after version ``mark`` (bronze only ever appends, and compacts)."""
    return landed.new_since(storage, source, mark)


def new_columns(
    ctx: RunContext, spec: SilverSpec, source: table.Snapshot, base: table.Snapshot
) -> tuple[str, ...]:
    """Columns beyond the model's, carried as strings: those silver already has (once added, a column is kept, whatever
    the policy of a later run), and, when the source's policy for new columns is ``evolve``, bronze's new ones."""
    known = set(arrow_schema(spec).names)
    have = [c for c in (base.schema.names if base.schema else []) if c not in known]
    if ctx.settings.new_columns.get(spec.source, "fail") == "evolve":
        have += [c for c in bronze.data_columns(source.schema) if c not in known and c not in have]
    return tuple(have)


def lookback_of(ctx: RunContext, spec: SilverSpec) -> int | None:
    """The table's lookback in periods of its partitioning: the settings' (``Settings.lookback``), else declared."""
    return ctx.settings.lookback.get(spec.name, ctx.settings.lookback.get("*", spec.lookback))


def lookback_cutoff(base: table.Snapshot, spec: SilverSpec, lookback: int | None) -> str | None:
    """The first partition a late row may still update (the table's newest partition minus ``lookback`` periods), or
    None when any late row may (no lookback set, an empty table, or one not partitioned by time)."""
    if lookback is None or not spec.partition or not spec.partition.time:
        return None
    newest = [v for f in base.files if (v := f.partition_values.get(spec.partition.column))]
    if not newest:
        return None
    return spec.partition.shift(max(newest), -lookback)


def late_check(spec: SilverSpec, cutoff: str | None, months: tuple[str, str] | None) -> tuple[RowCheck, ...]:
    """Older than the lookback window: held in quarantine until a backfill of its month takes it in."""
    if not cutoff or not spec.partition or not spec.partition.time:
        return ()
    column = spec.partition.source_column
    late = spec.partition.expr() < dt.date.fromisoformat(cutoff)  # the row's partition, before the first still open
    if months:
        month = pl.col(column).cast(pl.Date).dt.truncate("1mo")
        late = late & ~month.is_between(dt.date.fromisoformat(months[0]), dt.date.fromisoformat(months[1]))
    return (RowCheck(f"late_arrival(before {spec.partition.label(cutoff)})", column, late),)


def partition_key(f: TableFile) -> str:
    return json.dumps(f.partition_values, sort_keys=True)


def in_months(values: dict[str, str | None], spec: SilverSpec, months: tuple[str, str]) -> bool:
    """Does the partition's period meet the backfill's months (``months``: the first days of the first and last)?"""
    assert spec.partition
    value = values.get(spec.partition.column)
    if value is None:
        return False
    end = Partitioning(spec.partition.column, spec.partition.source_column, "month").shift(months[1], 1)
    return value < end and spec.partition.shift(value, 1) > months[0]


def in_partition(base: table.Snapshot, key: str, spec: SilverSpec) -> list[TableFile]:
    if not spec.partition:
        return list(base.files)
    return base.files_in([tuple(json.loads(key).values())])

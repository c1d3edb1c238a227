"""The silver stage's worker side: validate and stage a new bronze file's rows by target partition (quarantining
rejects), find which partition owns a key, and merge a partition's staged rows with its current ones."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from lakehouse import engine
from lakehouse.bronze import landed
from lakehouse.errors import QualityGateFailed, SchemaMismatch
from lakehouse.quality import checks, quarantine
from lakehouse.quality.validation import ROW_ID, model_dtypes, split_valid
from lakehouse.silver.reports import Finding, Merged, Quarantined, Read, Report, Staged, plain
from lakehouse.silver.tables import LINEAGE, arrow_schema, in_months, late_check, ref
from lakehouse.spec import Silver as SilverSpec
from lakehouse.storage import Storage
from lakehouse.storage.files import DataFile, partition_value
from lakehouse.storage.frames import read_files, to_frame, without, write_frame


def owners_of_staged(
    storage: Storage, spec: SilverSpec, staging: str, files: list[dict[str, Any]], *, all_keys: bool
) -> pl.DataFrame:
    """``keys + __owner`` (the partition of the key's latest staged row): every staged key when ``all_keys``, else
    only the keys staged in more than one partition. Reads keys first, lineage only for keys in two partitions."""
    assert spec.partition
    keys, part = list(spec.keys), spec.partition.column
    df = read_files(storage, staging, files, columns=[*keys, part], partition_types={part: pl.String})
    owners = df.unique().rename({part: "__owner"})
    split = owners.group_by(keys).agg(pl.len().alias("__n")).filter(pl.col("__n") > 1).drop("__n")
    if split.height:
        columns = [*keys, part, *LINEAGE]
        lineage = read_files(storage, staging, files, columns=columns, partition_types={part: pl.String})
        latest = (
            lineage.join(split, on=keys, how="semi")
            .sort(list(LINEAGE), maintain_order=True)
            .unique(subset=keys, keep="last", maintain_order=True)
            .select(*keys, pl.col(part).alias("__owner"))
        )
        owners = pl.concat([owners.join(split, on=keys, how="anti"), latest])
    return owners if all_keys else owners.join(split, on=keys, how="semi")


def moved_away(item: dict[str, Any], *, storage: Storage, spec: SilverSpec, owners: Any) -> list[str]:
    """Does this existing file hold a key whose latest row now belongs to another partition?"""
    keys = list(spec.keys)
    owner: pl.DataFrame = engine.fetch(owners)
    here = item["partition_values"]
    df = read_files(storage, ref(spec.name).rel, [item], columns=keys)
    hit = df.join(owner, on=keys, how="inner").filter(pl.col("__owner") != next(iter(here.values()))).height
    return [json.dumps(here, sort_keys=True)] if hit else []


def validate_file(
    item: dict[str, Any],
    *,
    storage: Storage,
    spec: SilverSpec,
    run_id: str,
    staging: str,
    max_rows: int,
    months: tuple[str, str] | None,
    cutoff: str | None,
    extra: tuple[str, ...],
) -> list[Report]:
    raw = landed.read_new(storage, spec.source, item)
    missing = [c for c in model_dtypes(spec.model) if c not in raw.columns]
    if missing:
        where = raw.get_column("_source_file")[0] if raw.height else item["path"]
        raise SchemaMismatch(
            f"required column {missing[0]!r} is missing (the model needs {', '.join(missing)})",
            table=str(ref(spec.name)), path=where, column=missing[0],
        )
    split = split_valid(raw, spec.model, late_check(spec, cutoff, months))
    if split.failing.height:
        raise row_failure(str(ref(spec.name)), raw, split.failing)
    valid = split.valid
    if months is None and spec.keys and valid.height:
        # Reduced per key before anything is staged: a key landed 100,000 times in a file stages one row, so the
        # partition (or MERGE) task holds distinct keys, not versions. A backfill stages every row: it counts only
        # its months' rows, and those it merges.
        order = [*spec.order_by, *LINEAGE] if spec.write_mode == "merge" else list(LINEAGE)
        valid = valid.sort(order, maintain_order=True).unique(subset=list(spec.keys), keep="last",
                                                               maintain_order=True)
    out: list[Report] = [Read(raw.height, duplicates=split.valid.height - valid.height)]
    out += summaries(raw, split.warned, "warn") + summaries(raw, split.rejected, "reject")
    if split.rejected.height:
        for qfile, late in write_rejected(storage, spec, raw, split.rejected, run_id):
            # late: held back by the lookback on purpose, counted, but not against the quality gate
            out.append(Quarantined(qfile, late))
    out += stage_valid(storage, spec, staging, valid, extra=extra, max_rows=max_rows, months=months)
    return out


def stage_valid(
    storage: Storage,
    spec: SilverSpec,
    staging: str,
    valid: pl.DataFrame,
    *,
    extra: tuple[str, ...],
    max_rows: int,
    months: tuple[str, str] | None,
) -> list[Staged]:
    """Stage valid rows by target partition (a backfill stages rows outside its months as keys only)."""
    # Files landed before a column was added lack it: null there.
    valid = valid.with_columns(pl.lit(None, pl.String).alias(c) for c in extra if c not in valid.columns)
    out: list[Staged] = []
    schema = arrow_schema(spec, extra)
    file_schema = schema
    if spec.partition:
        p = spec.partition
        valid = valid.with_columns(p.expr())
        file_schema = without(schema, [p.column])
        groups = valid.partition_by(p.column, as_dict=True, include_key=False) if valid.height else {}
        parts = [({p.column: partition_value(k[0])}, g) for k, g in groups.items()]
        if months:
            # A backfill rewrites only its months; of the others it needs only who holds which key, and when.
            outside = [(v, g) for v, g in parts if not in_months(v, spec, months)]
            parts = [(v, g) for v, g in parts if in_months(v, spec, months)]
            keys_schema = pa.schema([schema.field(c) for c in [*spec.keys, *LINEAGE]])
            for values, frame in outside:
                for f in write_frame(storage, staging, frame, keys_schema, partition_values=values, prefix="keys",
                                     max_rows=max_rows):
                    out.append(Staged(f, keys_only=True))
    else:
        parts = [({}, valid)] if valid.height else []
    for values, frame in parts:
        for f in write_frame(
            storage, staging, frame, file_schema, partition_values=values, prefix="staged", max_rows=max_rows
        ):
            out.append(Staged(f))
    return out


def row_failure(table_name: str, raw: pl.DataFrame, failing: pl.DataFrame) -> QualityGateFailed:
    """Rows of ``raw`` failed a row rule whose action is ``fail`` (``failing``: ``ROW_ID``, check, column, value): the
    error names the check, column, landed value, file and line, and carries the failed check for ``_meta.checks``."""
    first = failing.row(0, named=True)
    where = raw.row(first[ROW_ID], named=True)
    line, path = where.get("_source_line"), where.get("_source_file")
    value = where.get(first["column"], first["value"])  # as landed: a rule sees "-5.0" for a landed "-5.00"
    message = (f"row check {first['check']} failed on column {first['column']} (value {value!r}) at line {line}, "
               f"{failing.height} row(s) in this file; its action is fail")
    check = checks.CheckResult(table_name, f"{first['check']} on {first['column']}", float(failing.height), 0.0,
                               "fail", False, f"{message} ({path})")
    return QualityGateFailed(message, table=table_name, check=first["check"], column=first["column"], path=path,
                             row=line, checks=[dataclasses.asdict(check)])


def summaries(raw: pl.DataFrame, failures: pl.DataFrame, kind: Literal["warn", "reject"]) -> list[Finding]:
    """Per (check, column): how many rows, and the first one's value, file and line."""
    if not failures.height:
        return []
    lineage = raw.with_row_index(ROW_ID).select(ROW_ID, "_source_file", "_source_line")
    first = (
        failures.join(lineage, on=ROW_ID, how="left")
        .group_by("check", "column", maintain_order=True)
        .agg(pl.len().alias("n"), pl.col(ROW_ID).first(), pl.col("value").first(),
             pl.col("_source_file").first().alias("file"), pl.col("_source_line").first().alias("line"))
    )
    out = []
    for r in first.iter_rows(named=True):
        landed = raw.row(r[ROW_ID], named=True)
        value = landed.get(r["column"], r["value"])  # as landed, not as the rule saw it typed
        out.append(Finding(kind, r["check"], r["column"], r["n"], plain(value), r["file"], r["line"]))
    return out


def write_rejected(
    storage: Storage, spec: SilverSpec, raw: pl.DataFrame, rejected: pl.DataFrame, run_id: str
) -> list[tuple[DataFile, int]]:
    """The rejects' quarantine files, one per landed file (a compacted bronze file holds many), each with how many of
    its rows were held as late."""
    records = rejected_records(raw, rejected, run_id)
    out = []
    for q in quarantine.by_landed_file(records):
        late = int(pc.sum(pc.starts_with(q.column("check"), quarantine.LATE)).as_py() or 0)
        source = q.column("_source_file")[0].as_py()
        out.append((quarantine.write(storage, spec.name, q, stage="silver", source_file=source, run_id=run_id), late))
    return out


def rejected_records(raw: pl.DataFrame, rejected: pl.DataFrame, run_id: str) -> pa.Table:
    """Quarantine records (``quarantine.SCHEMA``) of the rejected rows of ``raw``."""
    data_columns = [c for c in raw.columns if not c.startswith("_")]
    rows = raw.with_row_index(ROW_ID).join(rejected.with_columns(pl.col(ROW_ID).cast(pl.UInt32)), on=ROW_ID)
    originals = list(rows.select(data_columns).iter_rows(named=True))
    columns = rows.get_column("column").to_list()
    return quarantine.records(
        stage="silver",
        checks=rows.get_column("check").to_list(),
        columns=columns,
        # The value as landed (a rule sees the typed value: "-5.0" for a landed "-5.00").
        values=[r[c] if c in r else v for r, c, v in zip(originals, columns, rows.get_column("value"), strict=True)],
        failures=rows.get_column("failures").to_list(),
        rows=[json.dumps(r) for r in originals],
        source_files=rows.get_column("_source_file").to_list(),
        source_lines=rows.get_column("_source_line").to_list(),
        run_id=run_id,
    )


def merge_partition(
    item: dict[str, Any],
    *,
    storage: Storage,
    spec: SilverSpec,
    run_id: str,
    staging: str,
    max_rows: int,
    owners: Any,
    extra: tuple[str, ...],
    measures: list[str] | None,
) -> list[Merged]:
    values = item["partition_values"]
    staged = read_files(storage, staging, [{"path": p, "partition_values": values} for p in item["staged"]])
    if not item["staged"]:  # a partition rewritten only because a key moved out of it
        part = [spec.partition.column] if spec.partition else []
        staged = to_frame(without(arrow_schema(spec, extra), part).empty_table())
    existing = read_files(storage, ref(spec.name).rel, item["existing"])
    frames = [staged.with_columns(pl.lit(True).alias("__new"))]
    if existing.height:
        frames.insert(0, existing.with_columns(pl.lit(False).alias("__new")))
    candidates = pl.concat(frames, how="diagonal_relaxed")  # rows written before a new column read it as null
    if owners is not None:
        # Rows whose key's latest row belongs to another partition leave this one.
        owner: pl.DataFrame = engine.fetch(owners)
        here = next(iter(values.values()))
        elsewhere = owner.filter(pl.col("__owner") != here).drop("__owner")
        candidates = candidates.join(elsewhere, on=list(spec.keys), how="anti")
    merged = (
        candidates.sort(list(LINEAGE), maintain_order=True)
        .unique(subset=list(spec.keys), keep="last", maintain_order=True)
    )
    kept = int(merged.get_column("__new").sum())
    schema = arrow_schema(spec, extra)
    if spec.partition:
        schema = without(schema, [spec.partition.column])
    files = write_frame(
        storage, ref(spec.name).rel, merged.drop("__new"), schema, partition_values=values,
        prefix=f"part-{run_id}", max_rows=max_rows,
    )
    if measures is None:
        return [Merged(tuple(files), staged.height, kept)]
    # drift is measured per month, on the partition as written
    profile = checks.profile(merged.drop("__new"), measures)
    return [Merged(tuple(files), staged.height, kept, partition=next(iter(values.values())), profile=profile)]

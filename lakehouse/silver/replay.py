"""Replay: rows quarantined at the silver stage re-validated with the model as it is now, those that pass merged into
silver, exactly once (see :func:`replay`)."""

from __future__ import annotations

from typing import Any

import polars as pl
import pyarrow as pa

from lakehouse import bronze, engine, table
from lakehouse.bronze import landed
from lakehouse.quality import quarantine
from lakehouse.quality.validation import split_valid
from lakehouse.running.context import RunContext, StageResult
from lakehouse.silver.build import merge_staged, with_columns
from lakehouse.silver.reports import Read, Replayed, Report, Rewritten
from lakehouse.silver.tables import (
    arrow_schema,
    late_check,
    lookback_cutoff,
    lookback_of,
    new_columns,
    ref,
    replay_id,
)
from lakehouse.silver.tasks import rejected_records, row_failure, stage_valid
from lakehouse.spec import Silver as SilverSpec
from lakehouse.storage import Storage
from lakehouse.storage.files import read_data_file
from lakehouse.storage.frames import read_files, to_frame


def replay(ctx: RunContext, spec: SilverSpec) -> StageResult:
    """Re-validate the rows of ``quarantine.<name>`` rejected at the silver stage with the model as it is now (after a
    rule or schema fix) and merge those that pass into silver; the rest stay in quarantine, with their current reason.

    Rows are re-read from bronze (the quarantine record names file and line), so they carry their original lineage
    and a newer row of the same key still wins. The lookback applies as in a run: a row that passes now but is older
    than the window stays, as late, for a backfill; rows held as late are not retried, and lines bronze could not
    parse cannot pass any model.

    Exactly once: the silver commit records the quarantine version it replayed (app transaction
    ``lakehouse/replay.<name>``), and the quarantine commit that drops the replayed rows says which version it
    finishes. A replay whose silver commit has no such quarantine commit (a crash in between, or a lost race on the
    quarantine commit) is finished by the next one without merging again.
    """
    result = StageResult(table=str(ref(spec.name)))
    storage = ctx.storage
    qsnap = table.snapshot(storage, quarantine.ref(spec.name))
    source = table.snapshot(storage, bronze.ref(spec.source))
    base = table.snapshot(storage, ref(spec.name))
    result.version = base.version
    held = [f for f in qsnap.files if quarantine.stage_of(f) == "silver"]
    if not held or not source.exists or not base.exists:
        return result.finish("skipped", "nothing quarantined at the silver stage")
    assert qsnap.version is not None
    result.inputs = {str(qsnap.ref): qsnap.version, str(source.ref): source.version or 0}
    done = table.txn_version(storage, ref(spec.name), replay_id(spec.name))
    unfinished = done is not None and not _replay_finished(storage, spec.name, done)
    if unfinished:
        assert done is not None
        # Finish that replay: the files it read that are still here hold the rows its silver commit took.
        then = {f.path for f in table.snapshot(storage, qsnap.ref, version=done).files}
        still = [f for f in held if f.path in then]
        # None left (a full refresh replaced the silver-stage records since): nothing to finish.
        held, unfinished = (still, True) if still else (held, False)
    by_source: dict[str, list[dict[str, Any]]] = {}  # landed file -> the bronze files holding its lines
    holds = landed.landed_files(storage, source)
    for f in source.files:
        for path in holds[f.path]:
            by_source.setdefault(path, []).append(f.item())
    items = [{"quarantine": f.item(), "bronze": by_source.get(str(f.mins.get("_source_file")), [])} for f in held]
    staging = f"_staging/{ctx.run_id}/replay/{spec.name}"
    extra = new_columns(ctx, spec, source, base)
    common = {"storage": storage, "spec": spec, "run_id": ctx.run_id, "max_rows": ctx.settings.target_file_rows,
              "extra": extra}
    cutoff = lookback_cutoff(base, spec, lookback_of(ctx, spec))
    try:
        kwargs = {**common, "staging": staging, "cutoff": cutoff}
        staged: list[Report] = engine.map_items(items, replay_file, fn_kwargs=kwargs)
        replayed = sum(m.rows for m in staged if isinstance(m, Replayed))
        result.rows_in = sum(m.rows for m in staged if isinstance(m, Read))
        result.files_in = len(items)
        rewrites = [m for m in staged if isinstance(m, Rewritten)]
        rewritten = {m.replaces for m in rewrites}
        if not replayed and not rewritten:
            return result.finish("skipped", f"re-validated {result.rows_in} quarantined rows: none passes now")
        replay_of = done if unfinished else qsnap.version
        info = {"run_id": ctx.run_id, "stage": "replay", "inputs": result.inputs, "replay_of": replay_of}
        if replayed and not unfinished:
            merged, replaced, result.partitions = merge_staged(
                ctx, spec, base, staged, staging, common, measures=None, rebuild=False
            )
            result.rows_written = sum(m.kept for m in merged)
            result.rows_duplicate = replayed - result.rows_written
            base = with_columns(storage, base, extra, ctx.run_id)
            result.version = table.commit(
                storage, base, schema=arrow_schema(spec, extra),
                adds=[f for m in merged for f in m.files], removes=replaced,
                partition_by=(spec.partition.column,) if spec.partition else (),
                app_transactions={replay_id(spec.name): qsnap.version}, metadata=info,
            )
        table.commit(
            storage, qsnap, schema=quarantine.SCHEMA,
            adds=[m.file for m in rewrites if m.file is not None],
            removes=[f for f in held if f.path in rewritten], metadata=info,
        )
    finally:
        storage.delete_dir(staging)
    left = result.rows_in - replayed
    note = f"replayed {replayed} of {result.rows_in} quarantined rows; {left} still fail and stay in quarantine"
    if not replayed:
        note += " (with their reasons as of now)"
        return result.finish("committed", note)
    if unfinished:
        note += "; silver already had them (an earlier replay stopped before its quarantine commit)"
    return result.finish("committed", note)


def _replay_finished(storage: Storage, name: str, version: int) -> bool:
    """Has a quarantine commit finished the replay of quarantine version ``version``?"""
    return any(c.get("stage") == "replay" and c.get("replay_of") == str(version)
               for c in table.commits_since(storage, quarantine.ref(name), version))


def replay_file(
    item: dict[str, Any],
    *,
    storage: Storage,
    spec: SilverSpec,
    run_id: str,
    staging: str,
    max_rows: int,
    extra: tuple[str, ...],
    cutoff: str | None,
) -> list[Report]:
    """Re-validate one quarantine file's rows from their bronze lines: stage those that pass, and rewrite the file
    without them (rows that still fail get a record with their current reason)."""
    held = to_frame(read_data_file(storage, quarantine.ref(spec.name).rel, item["quarantine"]["path"]))
    retry = held.filter(~pl.col("check").str.starts_with(quarantine.LATE))
    raw = read_files(storage, bronze.ref(spec.source).rel, item["bronze"]) if item["bronze"] else pl.DataFrame()
    out: list[Report] = [Read(retry.height)]
    if not raw.height or not retry.height:
        return out
    lineage = ["_source_file", "_source_line"]
    raw = raw.join(retry.select(lineage).unique(), on=lineage, how="semi").sort("_source_line")
    split = split_valid(raw, spec.model, late_check(spec, cutoff, None))
    if split.failing.height:
        raise row_failure(str(ref(spec.name)), raw, split.failing)
    fresh = rejected_records(raw, split.rejected, run_id) if split.rejected.height else None
    before = retry.select(*lineage, "check").sort(lineage)
    after = to_frame(fresh).select(*lineage, "check").sort(lineage) if fresh is not None else before.clear()
    if not split.valid.height and before.equals(after):
        return out  # nothing passes and every reason stands: leave the file
    if split.valid.height:
        out.append(Replayed(split.valid.height))
        out += stage_valid(storage, spec, staging, split.valid, extra=extra, max_rows=max_rows, months=None)
    kept = held.join(raw.select(lineage), on=lineage, how="anti").to_arrow().cast(quarantine.SCHEMA)
    left = pa.concat_tables([kept, fresh]) if fresh is not None else kept
    written = None
    if left.num_rows:
        source = left.column("_source_file")[0].as_py()
        written = quarantine.write(storage, spec.name, left, stage="silver", source_file=source, run_id=run_id)
    out.append(Rewritten(written, left.num_rows, item["quarantine"]["path"]))
    return out

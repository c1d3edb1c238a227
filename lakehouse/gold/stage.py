"""The gold stage (``build``): plan from the inputs' logs what to rebuild, place the work on Ray, commit once.

Plan (driver, from the logs). Since the versions the table recorded, which output partitions (or keys) do the
inputs' changes reach?

* a change in a lookup rebuilds everything (what depends on a dimension row is everywhere);
* ``per_partition``: a changed input partition rebuilds the same output partition (with ``window`` > 1, the
  ``window`` partitions it feeds);
* ``aggregate`` into a partitioned table: a changed input partition rebuilds the same partition when the input is
  partitioned like the output, or, ``through`` a lookup, the lookup's partitions that hold the changed rows' keys;
  a changed partition of that lookup rebuilds itself;
* ``aggregate`` into an unpartitioned table whose keys are its ``by`` columns: the keys in the changed files are
  recomputed from every input row of theirs and merged into the table on its keys (deleted when none is left);
  otherwise the table is recomputed whole.

Execute (Ray workers): tasks aligned with the input's partitions, or partial aggregates per input file staged in
hash buckets and finished by one task per bucket; lookups broadcast through the object store when their rows fit
the broadcast threshold, read filtered to each task's keys otherwise; the lookup an aggregate goes through in
batches of whole output partitions, so worker memory stays bounded whatever the table's size.

Commit (driver): one version that removes the files of the rebuilt partitions (or the merged files) and adds the
new ones, carrying every input's version.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa

from lakehouse import engine, silver, table
from lakehouse.gold import salting, tasks
from lakehouse.gold.inputs import Input, Partitions, inputs, items, marks, ref, versions
from lakehouse.quality.validation import model_dtypes
from lakehouse.running.context import RunContext, StageResult
from lakehouse.spec import Aggregate, Gold, Lookup, PerPartition, Pipeline
from lakehouse.spec.plans import parameters
from lakehouse.storage import Storage
from lakehouse.storage.files import DataFile
from lakehouse.storage.frames import arrow_type
from lakehouse.table import Snapshot, TableFile, merge, ranges

log = logging.getLogger("lakehouse")
# At most this many (partition) buckets for the final step of an aggregation.
MAX_BUCKETS = 64


@dataclass
class Target:
    """What a build replaces: output partitions (None: all), or with ``keys`` the keys of the changed input rows,
    merged. ``why`` says how it was derived (``lakehouse plan`` shows it)."""

    partitions: Partitions | None = None
    keys: bool = False
    why: list[str] = field(default_factory=list)


def build(ctx: RunContext, pipeline: Pipeline, spec: Gold) -> StageResult:
    """Bring ``gold.<spec.name>`` up to date with its inputs in one commit."""
    storage = ctx.storage
    result = StageResult(table=str(ref(spec.name)))
    ins = inputs(ctx, pipeline, spec)
    base = table.snapshot(storage, ref(spec.name))
    result.inputs = versions(ins)
    result.version = base.version
    if not any(i.changed and i.files_changed(storage) for i in ins.values()):
        return result.finish("skipped", "up to date")
    target = plan(ctx, pipeline, spec, ins, base)
    out = output(ctx, spec)
    staging = f"_staging/{ctx.run_id}/gold/{spec.name}"
    try:
        if isinstance(spec.plan, PerPartition):
            adds, removes = _per_partition(ctx, pipeline, spec, spec.plan, ins, base, target, out, result)
        else:
            adds, removes = _aggregate(ctx, pipeline, spec, spec.plan, ins, base, target, out, staging, result)
        result.rows_written = sum(a.rows for a in adds)
        result.partitions = len({tuple(a.partition_values.items()) for a in adds})
        result.version = table.commit(
            storage, base, schema=out.schema, adds=adds, removes=removes,
            partition_by=(spec.partition,) if spec.partition else (),
            app_transactions=marks(spec, ins),
            metadata={"run_id": ctx.run_id, "stage": "gold", "inputs": result.inputs},
        )
    finally:
        storage.delete_dir(staging)
    return result.finish("committed", "; ".join(target.why) if target.keys else "")


def output(ctx: RunContext, spec: Gold) -> tasks.Output:
    dtypes = model_dtypes(spec.model)
    schema = pa.schema([(c, arrow_type(t)) for c, t in dtypes.items()])
    return tasks.Output(name=str(ref(spec.name)), rel=ref(spec.name).rel, model=spec.model, schema=schema,
                        partition=spec.partition, keys=tuple(spec.keys), run_id=ctx.run_id,
                        max_rows=ctx.settings.target_file_rows)


# --- planning -----------------------------------------------------------------------------------------------------


def plan(ctx: RunContext, pipeline: Pipeline, spec: Gold, ins: dict[str, Input], base: Snapshot, *,
         estimate: bool = False) -> Target:
    """Which output partitions (or keys) this build replaces, and why. With ``estimate`` (a dry run) nothing is read
    on workers: the partitions changed rows reach through a lookup are named, not found."""
    storage = ctx.storage
    if ctx.full_refresh:
        return Target(why=["full refresh"])
    if not base.exists:
        return Target(why=["first build"])
    p = spec.plan
    through = p.through if isinstance(p, Aggregate) else None
    for name, lk in p.lookups.items():
        i = ins[lk.input]
        if name != through and lk.input != p.input and i.changed and i.files_changed(storage):
            return Target(why=[f"lookup {name} ({i.snap.ref}) changed: everything is rebuilt"])
    main = ins[p.input]
    changed = main.changed_partitions(storage) if main.changed else set()
    if isinstance(p, PerPartition):
        if changed is None:
            return Target(why=[f"{main.snap.ref} has no mark: everything is rebuilt"])
        _, time = pipeline.partition_of(p.input)
        fed: Partitions = set(changed)
        if p.window > 1 and time is not None:
            fed = {(time.shift(v, k),) for (v,) in changed if v is not None for k in range(p.window)}
        return Target(partitions=fed, why=[f"{main.snap.ref}: {_labels(changed)} changed"])
    if not spec.partition:
        if tuple(spec.keys) == tuple(p.by) and changed is not None:
            return Target(keys=True, why=[f"{main.snap.ref}: the keys of {len(changed)} changed partition(s) merged"])
        return Target(why=["recomputed whole (an unpartitioned aggregate whose keys are not its by columns)"])
    parts: Partitions = set()
    why = []
    if changed:
        in_column, _ = pipeline.partition_of(p.input)
        if through is not None and estimate:
            lk = p.lookups[through]
            why.append(f"{main.snap.ref}: {_labels(changed)} changed; the {spec.partition} partitions of their "
                       f"{lk.input} rows (through {lk.by_column} -> {lk.key}) are found when the run reads them")
        elif through is not None:
            mapped = _through(ctx, pipeline, p, main, ins[p.lookups[through].input], changed)
            if mapped is None:
                return Target(why=[f"{main.snap.ref} changed files are gone: everything is rebuilt"])
            parts |= mapped
            why.append(f"{main.snap.ref}: {_labels(changed)} changed, feeding {_labels(mapped)} through {through}")
        elif in_column == spec.partition:
            parts |= changed
            why.append(f"{main.snap.ref}: {_labels(changed)} changed")
        else:
            return Target(why=[f"{main.snap.ref} changed and is not partitioned like the output: everything"])
    elif changed is None:
        return Target(why=[f"{main.snap.ref} has no mark: everything is rebuilt"])
    if through is not None:
        via = ins[p.lookups[through].input]
        moved = via.changed_partitions(storage) if via.changed else set()
        if moved is None:
            return Target(why=[f"{via.snap.ref} has no mark: everything is rebuilt"])
        if moved:
            parts |= moved
            why.append(f"{via.snap.ref}: {_labels(moved)} changed")
    return Target(partitions=parts, why=why)


def _labels(parts: Partitions) -> str:
    values = sorted(str(v[0]) if len(v) == 1 else str(v) for v in parts)
    if not values:
        return "no partition"
    return f"{len(values)} partition(s) ({values[0]}..{values[-1]})" if len(values) > 2 else ", ".join(values)


def _through(ctx: RunContext, pipeline: Pipeline, p: Aggregate, main: Input, via: Input,
             changed: Partitions) -> Partitions | None:
    """The partitions of lookup ``via`` that hold the keys of ``main``'s rows in its changed partitions (the rows
    there now, and those removed since the mark)."""
    storage = ctx.storage
    lk = p.lookups[p.through or ""]
    assert lk.key is not None and lk.by_column is not None
    diff = main.diff(storage)
    removed = diff[1] if diff else []
    if not _exist(storage, main.snap.ref.rel, removed):
        return None
    files = items(main.files(changed)) + items(removed)
    if not files or not via.snap.files:
        return set()
    keys = engine.broadcast(tasks.distinct_keys, storage, source_table(pipeline, main), files, [lk.by_column])
    found = engine.map_items([ranges.ranged_item(f, lk.key) for f in via.snap.files], tasks.through_task,
                             fn_kwargs={"storage": storage, "table": source_table(pipeline, via), "key": lk.key,
                                        "keys": keys})
    return {(f.value,) for f in found}


def _exist(storage: Storage, rel: str, files: list[TableFile]) -> bool:
    if not files:
        return True
    import pyarrow.fs as pafs

    infos = storage.filesystem().get_file_info([storage.fs_path(f"{rel}/{f.path}") for f in files])
    return all(i.type != pafs.FileType.NotFound for i in infos)


# --- placement ----------------------------------------------------------------------------------------------------


def source_table(pipeline: Pipeline, i: Input) -> tasks.Table:
    """How tasks read input ``i``: its schema from the log, or the declared one while it does not exist."""
    import polars as pl

    layer, name = i.snap.ref.layer, i.snap.ref.name
    if i.snap.schema is not None:
        schema = dict(pl.from_arrow(i.snap.schema.empty_table()).schema)  # type: ignore[union-attr]
    else:
        schema = dict(pl.from_arrow(_declared_schema(pipeline, layer, name).empty_table()).schema)  # type: ignore
    partition = i.snap.partition_by[0] if i.snap.partition_by else pipeline.partition_of(f"{layer}.{name}")[0]
    return tasks.Table(name=str(i.snap.ref), rel=i.snap.ref.rel, schema=schema, partition=partition)


def _declared_schema(pipeline: Pipeline, layer: str, name: str) -> pa.Schema:
    from lakehouse import cdc

    if layer == "gold":
        dtypes = model_dtypes(pipeline.gold_spec(name).model)
        return pa.schema([(c, arrow_type(t)) for c, t in dtypes.items()])
    for c in pipeline.cdc:
        if c.history == name:
            return cdc.history_schema(pipeline.silver_spec(c.table))
    return silver.arrow_schema(pipeline.silver_spec(name))


def _place(ctx: RunContext, pipeline: Pipeline, name: str, lk: Lookup, i: Input,
           files: list[TableFile] | None = None, broadcast: bool = False) -> tasks.LookupInput:
    """Broadcast the lookup when its rows (from the log) fit the threshold or it has no key; otherwise each task reads
    it filtered to its keys."""
    files = list(i.snap.files) if files is None else files
    threshold = lk.broadcast_max_rows or ctx.settings.broadcast_max_rows
    table_ = source_table(pipeline, i)
    if broadcast or lk.key is None or sum(f.rows for f in files) <= threshold:
        ref_ = engine.broadcast(tasks.read_lookup, ctx.storage, table_, items(files), lk)
        return tasks.LookupInput(name=name, table=table_, lookup=lk, ref=ref_)
    return tasks.LookupInput(name=name, table=table_, lookup=lk,
                             files=tuple(ranges.ranged_item(f, lk.key) for f in files))


def _per_partition(ctx: RunContext, pipeline: Pipeline, spec: Gold, p: PerPartition, ins: dict[str, Input],
                   base: Snapshot, target: Target, out: tasks.Output,
                   result: StageResult) -> tuple[list[DataFile], list[TableFile]]:
    main = ins[p.input]
    _, time = pipeline.partition_of(p.input)
    present = {f.partition_values.get(main.snap.partition_by[0]) for f in main.snap.files} if main.snap.files else set()
    wanted = present if target.partitions is None else {v for (v,) in target.partitions} & present
    jobs: list[dict[str, Any]] = []
    sizes: list[int] = []
    for value in sorted(v for v in wanted if v is not None) + ([None] if None in wanted else []):
        window: Partitions = {(value,)}
        if p.window > 1 and time is not None and value is not None:
            window = {(time.shift(value, -k),) for k in range(p.window)}
        files = main.files(window)
        sizes.append(sum(f.rows for f in main.files({(value,)})))
        jobs.append({"partition": value, "files": items(files)})
    result.rows_in = sum(sizes)
    lookups = {name: _place(ctx, pipeline, name, lk, ins[lk.input]) for name, lk in p.lookups.items()} if jobs else {}
    kwargs = {"storage": ctx.storage, "plan": p, "source": source_table(pipeline, main), "lookups": lookups,
              "out": out}
    groups = _groups(jobs, sizes, 4 * ctx.settings.ray.num_cpus)
    reports = engine.map_items([{"partitions": g} for g in groups], tasks.partition_task, fn_kwargs=kwargs)
    adds = [r.file for r in reports if isinstance(r, tasks.Written)]
    return adds, base.files_in(target.partitions)


def _groups(jobs: list[dict[str, Any]], rows: list[int], count: int) -> list[list[dict[str, Any]]]:
    """Consecutive jobs in at most ``count`` groups of about the same rows: a task does a few partitions, so its
    fixed costs (the model's check, a task's start) are paid a few times, not once a partition."""
    if not jobs:
        return []
    target = max(1, -(-sum(rows) // max(1, count)))
    groups: list[list[dict[str, Any]]] = [[]]
    held = 0
    for job, n in zip(jobs, rows, strict=True):
        if groups[-1] and held + n > target and len(groups) < count:
            groups.append([])
            held = 0
        groups[-1].append(job)
        held += n
    return groups


def _aggregate(ctx: RunContext, pipeline: Pipeline, spec: Gold, p: Aggregate, ins: dict[str, Input],
               base: Snapshot, target: Target, out: tasks.Output, staging: str,
               result: StageResult) -> tuple[list[DataFile], list[TableFile]]:
    storage = ctx.storage
    main = ins[p.input]
    in_column, _ = pipeline.partition_of(p.input)
    aligned = spec.partition is not None and p.through is None and in_column == spec.partition
    scanned = main.files(target.partitions) if aligned and target.partitions is not None else list(main.snap.files)
    result.rows_in = sum(f.rows for f in scanned)
    route = [spec.partition] if spec.partition else list(p.by)
    buckets = max(1, min(MAX_BUCKETS, -(-result.rows_in // ctx.settings.final_task_rows)))
    touched = None
    if target.keys:
        diff = main.diff(storage)
        assert diff is not None
        added, removed = diff
        if not _exist(storage, main.snap.ref.rel, removed):
            target.keys, target.why = False, ["files removed from the input are gone: recomputed whole"]
        else:
            touched = engine.broadcast(tasks.distinct_keys, storage, source_table(pipeline, main),
                                       items([*added, *removed]), list(p.by))
    # broadcast lookups are read on workers while the hot keys are counted
    shared = {name: _place(ctx, pipeline, name, lk, ins[lk.input])
              for name, lk in p.lookups.items() if name != p.through} if scanned else {}
    hot, routing = _hot_keys(ctx, pipeline, spec, p, main, scanned, route, buckets, touched)
    hot_rows: dict[str, int] = {}
    at_final, by_bucket_of = _co_partition(ctx, p, shared, route, buckets, routing, touched, staging)
    adds: list[DataFile] = []
    merge_source: list[DataFile] = []
    for n, (parts, via_files) in enumerate(_batches(ctx, spec, p, ins, target)):
        lookups = dict(shared)
        if p.through is not None:
            lk = p.lookups[p.through]
            result.rows_in += sum(f.rows for f in via_files)
            if not via_files:
                continue
            # a batch is broadcast whole: it holds at most the threshold's rows, or one partition that holds more
            lookups[p.through] = _place(ctx, pipeline, p.through, lk, ins[lk.input], files=via_files, broadcast=True)
        if not scanned:
            break
        where = f"{staging}/b{n}"
        kwargs = {"storage": storage, "plan": p, "source": source_table(pipeline, main), "lookups": lookups,
                  "out": out, "route": route, "buckets": buckets, "staging": where, "touched": touched,
                  "routing": routing}
        staged = engine.map_items([{"files": [f.item()]} for f in scanned], tasks.partial_task, fn_kwargs=kwargs)
        by_bucket: dict[int, list[str]] = {b: [] for b in range(buckets)} if target.keys else {}
        for s in staged:
            if isinstance(s, tasks.Staged):
                by_bucket.setdefault(s.bucket, []).append(s.file.path)
            elif isinstance(s, tasks.HotRows):
                hot_rows[s.key] = hot_rows.get(s.key, 0) + s.rows
        allowed = None if parts is None else sorted((v for (v,) in parts), key=lambda v: (v is None, v or ""))
        mode = "merge" if target.keys else "write"
        final = {"storage": storage, "plan": p, "lookups": {**lookups, **at_final}, "out": out, "staging": where,
                 "mode": mode, "route": route, "buckets": buckets, "allowed": allowed, "touched": touched,
                 "merge_rel": f"{staging}/merge", "routing": routing}
        jobs = [{"bucket": b, "files": paths,
                 "lookups": {name: by_bucket_of[name].get(b, []) for name in by_bucket_of}}
                for b, paths in sorted(by_bucket.items())]
        if routing is not None and routing.any_salted:  # the salted keys' slices are merged as the tasks' reduce
            reports = engine.map_reduce(jobs, tasks.final_task, tasks.merge_slices, fn_kwargs=final, reduce_kwargs={
                "storage": storage, "plan": p, "lookups": lookups, "out": out, "mode": mode, "routing": routing,
                "allowed": allowed, "merge_rel": f"{staging}/merge"})
        else:
            reports = engine.map_items(jobs, tasks.final_task, fn_kwargs=final)
        for r in reports:
            if isinstance(r, tasks.Written):
                adds.append(r.file)
            elif isinstance(r, tasks.Staged) and r.bucket == -1:
                merge_source.append(r.file)
            elif isinstance(r, tasks.Finished):
                result.tasks.append(r)
    for h in hot:
        h.final_rows = hot_rows.get(h.key, 0) if routing is not None else None
    result.hot_keys = hot
    if not target.keys:
        return adds, base.files_in(target.partitions)
    done = merge.execute(storage, base, merge_source, f"{staging}/merge",
                         merge.MergeSpec(keys=tuple(spec.keys), delete_column=tasks.DELETE), out.schema,
                         run_id=ctx.run_id, max_rows=ctx.settings.target_file_rows)
    c = done.counts
    target.why.append(f"{c['inserted']} inserted, {c['updated']} updated, {c['deleted']} deleted, "
                      f"{done.files_rewritten} file(s) rewritten")
    return done.adds, done.removes


def _co_partition(ctx: RunContext, p: Aggregate, placed: dict[str, tasks.LookupInput], route: list[str], buckets: int,
                  routing: salting.Routing | None, touched: Any,
                  staging: str) -> tuple[dict[str, tasks.LookupInput], dict[str, dict[int, list[str]]]]:
    """The lookups of ``final`` too large to broadcast and joined on the routing column, split by the final bucket of
    their key once (a hash-partitioned join: each final task reads its bucket's rows, where a filtered read would
    have each task read every file whose key range holds one of its keys); a salted key's rows go to each of its
    slices' tasks. By name: the lookup as final tasks get it, and its staged files by bucket."""
    _, wanted = parameters(p.final)
    found: dict[str, tasks.LookupInput] = {}
    files: dict[str, dict[int, list[str]]] = {}
    for name in wanted:
        lk = placed.get(name)
        if (lk is None or lk.ref is not None or buckets <= 1 or len(route) != 1
                or lk.lookup.by_column != route[0] or name == p.through):
            continue
        rel = f"{staging}/lookup-{name}"
        split = engine.map_items([{"files": [f]} for f in lk.files], tasks.split_lookup, fn_kwargs={
            "storage": ctx.storage, "lookup": lk, "route": route[0], "buckets": buckets, "routing": routing,
            "staging": rel, "touched": touched})
        files[name] = {}
        for r in split:
            if isinstance(r, tasks.Staged):
                files[name].setdefault(r.bucket, []).append(r.file.path)
        found[name] = dataclasses.replace(lk, files=(), staged=rel)
    return found, files


def _hot_keys(ctx: RunContext, pipeline: Pipeline, spec: Gold, p: Aggregate, main: Input, scanned: list[TableFile],
              route: list[str], buckets: int, touched: Any) -> tuple[list[salting.HotKey], salting.Routing | None]:
    """The hot keys of the final step's routing columns, counted over (a sample of) the input's files before the
    partial step, and where the known keys go (see :mod:`lakehouse.gold.salting`). Keys the partial function computes
    (not columns of the input) cannot be counted beforehand: their rows go by hash."""
    settings = ctx.settings
    source = source_table(pipeline, main)
    if not scanned or not set(route) <= set(source.schema):
        return [], None
    share = settings.hot_key_share.get(spec.name, settings.hot_key_share.get("*", salting.HOT_SHARE))
    forced = settings.salts.get(spec.name, settings.salts.get("*"))
    if forced == 0 and share >= 1.0:  # nothing to salt, place or record: not even counted
        return [], None
    why = ""
    # the output's columns holding the key: the routing columns, or its keys standing for them (o_custkey -> c_custkey)
    output = tuple(route) if set(route) <= set(model_dtypes(spec.model)) else tuple(spec.keys)
    if p.merge is None:
        why = "the plan declares no merge to combine a key's slices"
    elif len(output) != len(route):
        why = f"the output has no column {', '.join(route)} (nor keys standing for them) to merge a key's slices by"
    floor = salting.floor_share(share, buckets)
    if route == [source.partition]:  # the input's partition column: its rows per value are in the log
        counts: dict[str | None, int] = {}
        for f in scanned:
            value = f.partition_values.get(route[0])
            counts[value] = counts.get(value, 0) + f.rows
        frame = pl.DataFrame({route[0]: list(counts), salting.COUNT: list(counts.values())},
                             schema={route[0]: pl.String, salting.COUNT: pl.Int64})
        frame = frame.with_columns(pl.col(route[0]).cast(source.schema[route[0]]))
        found = salting.known_keys([salting.KeyCounts(frame, sum(counts.values()))], floor=floor)
    else:
        # a column or two of each file: a task per CPU, not per file, or starting tasks costs more than the reading;
        # each returns only its heavy keys (hundreds of rows), so no reduce step is needed
        files = [f.item() for f in salting.sample(scanned)]
        per = -(-len(files) // max(1, ctx.settings.ray.num_cpus))
        found = salting.known_keys(engine.map_items(
            [{"files": files[i:i + per]} for i in range(0, len(files), per)], salting.count_task,
            fn_kwargs={"storage": ctx.storage, "table": source, "columns": route, "floor": floor,
                       "touched": touched}), floor=floor)
    return salting.route_plan(found, route, name=str(ref(spec.name)), buckets=buckets,
                              total_rows=sum(f.rows for f in scanned), hot_share=share, forced=forced,
                              can_salt=not why, why_not=why, salt_by=p.salt_by, output=output)


def _batches(ctx: RunContext, spec: Gold, p: Aggregate, ins: dict[str, Input],
             target: Target) -> list[tuple[Partitions | None, list[TableFile]]]:
    """The output partitions built together, with the files of the lookup the aggregate goes through (see
    :func:`partition_batches`). Without a lookup to go through, one batch of every partition to build. Partitions
    to replace that the lookup no longer holds are only removed: there is nothing to build for them."""
    if p.through is None:
        return [(target.partitions, [])]
    lk = p.lookups[p.through]
    via = ins[lk.input]
    column = via.snap.partition_by[0] if via.snap.partition_by else ""
    limit = lk.broadcast_max_rows or ctx.settings.broadcast_max_rows
    batches = partition_batches(via.files(target.partitions), column, limit)
    return [({(f.partition_values.get(column),) for f in files}, files) for files in batches]


def partition_batches(files: list[TableFile], column: str, max_rows: int) -> list[list[TableFile]]:
    """Whole partitions (by ``column``) packed in order into batches of at most ``max_rows`` rows (a bigger partition
    alone). Each batch is broadcast to every task, so this bounds worker memory whatever the table's size; a partition
    never straddles two batches, so each output partition is computed by exactly one."""
    by_partition: dict[str | None, list[TableFile]] = {}
    for f in files:
        by_partition.setdefault(f.partition_values.get(column), []).append(f)
    batches: list[list[TableFile]] = []
    rows = max_rows
    for _, part in sorted(by_partition.items(), key=lambda kv: (kv[0] is None, kv[0] or "")):
        n = sum(f.rows for f in part)
        if rows + n > max_rows or not batches:
            batches.append([])
            rows = 0
        batches[-1].extend(part)
        rows += n
    return batches

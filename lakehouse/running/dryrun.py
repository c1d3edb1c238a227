"""``lakehouse plan``: what a run would do now, per table and why, from the landing zone and the Delta logs alone
(no data file is read, nothing is written).

Bronze lists the landed files it would ingest. Silver and change stages count the bronze files added since their
watermark, and say when bronze has files pending for them too (a run ingests those first). Gold says which of its
partitions (or keys) the changes its inputs hold now reach, as the gold planner derives them, and how its plan
decides that for the changes this run will bring.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lakehouse import bronze, gold, silver, table
from lakehouse.quality import rejected_files
from lakehouse.running.context import RunContext
from lakehouse.spec import Aggregate, Gold, PerPartition, Pipeline


@dataclass
class Planned:
    """One stage of the plan: the table, what it would do (``work``: files or partitions), and why."""

    table: str
    action: str
    work: list[str] = field(default_factory=list)
    why: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"table": self.table, "action": self.action, "work": self.work, "why": self.why}


def describe(ctx: RunContext, pipeline: Pipeline) -> list[Planned]:
    """The plan of a run over the current state of the root, stage by stage in run order."""
    storage = ctx.storage
    pending: dict[str, int] = {}
    out: list[Planned] = []
    for layer, name in pipeline.stages():
        if layer == "bronze":
            source = pipeline.source(name)
            snap = table.snapshot(storage, bronze.ref(name))
            files, unknown = bronze.pending_files(storage, snap, rejected_files.known(storage, name), source=source)
            pending[name] = len(files)
            why = [f"landed under {source.raw_dir}/ and not yet in {bronze.ref(name)}"] if files else []
            if unknown:
                why.append(f"{len(unknown)} landed file(s) of unknown format are ignored, e.g. {unknown[0]}")
            out.append(Planned(str(bronze.ref(name)), f"ingest {len(files)} file(s)" if files else "nothing new",
                               [f["path"] for f in files], why))
        elif layer in ("silver", "cdc"):
            out.append(_silver(ctx, pipeline, layer, name, pending))
        else:
            out.append(_gold(ctx, pipeline, pipeline.gold_spec(name)))
    return out


def _silver(ctx: RunContext, pipeline: Pipeline, layer: str, name: str, pending: dict[str, int]) -> Planned:
    storage = ctx.storage
    if layer == "silver":
        spec = pipeline.silver_spec(name)
        source, target, app = spec.source, silver.ref(name), silver.app_id(name)
    else:
        cdc = pipeline.cdc_spec(name)
        source, target, app = cdc.source, silver.ref(name), silver.cdc_app_id(cdc.table)
    snap = table.snapshot(storage, bronze.ref(source))
    mark = None if ctx.full_refresh else table.txn_version(storage, target, app)
    new = silver.files_since(storage, snap, mark) if snap.exists and (mark is None or mark < (snap.version or 0)) \
        else []
    rows = sum(f.rows for f in new)
    why = [f"{len(new)} bronze file(s) ({rows} rows) since {bronze.ref(source)} version {mark}"] if new and mark \
        is not None else ([f"no watermark yet: every row of {bronze.ref(source)}"] if new else [])
    if pending.get(source):
        why.append(f"and the {pending[source]} file(s) this run ingests into {bronze.ref(source)} first")
    if layer == "silver" and pipeline.silver_spec(name).partition is not None:
        part = pipeline.silver_spec(name).partition
        assert part is not None
        kind = f"{part.grain} partitions" if part.time else "partitions by value"
        why.append(f"rewrites the {kind} ({part.column}) its new rows fall in")
    action = "process new rows" if new or pending.get(source) else "nothing new"
    return Planned(str(target), action, [f.path for f in new], why)


def _gold(ctx: RunContext, pipeline: Pipeline, spec: Gold) -> Planned:
    storage = ctx.storage
    ins = gold.inputs(ctx, pipeline, spec)
    base = table.snapshot(storage, gold.ref(spec.name))
    rule = _rule(pipeline, spec)
    changed = [i for i in ins.values() if i.changed and i.files_changed(storage)]
    if not changed:
        return Planned(str(gold.ref(spec.name)), "up to date (for now)", [], [rule])
    target = gold.plan(ctx, pipeline, spec, ins, base, estimate=True)
    if target.partitions is not None:
        work = sorted(str(p[0]) for p in target.partitions)
        action = f"rebuild {len(work)} partition(s)"
    elif target.keys:
        work, action = [], "merge the keys of the changed rows"
    else:
        work, action = [], "rebuild everything"
    return Planned(str(gold.ref(spec.name)), action, work, [*target.why, rule])


def _rule(pipeline: Pipeline, spec: Gold) -> str:
    p = spec.plan
    if isinstance(p, PerPartition):
        window = f" and the {p.window - 1} after it" if p.window > 1 else ""
        return f"per_partition over {p.input}: a changed partition rebuilds the same partition{window}"
    assert isinstance(p, Aggregate)
    if not spec.partition:
        if tuple(spec.keys) == tuple(p.by):
            return f"aggregate of {p.input} by {', '.join(p.by)}: the changed keys are recomputed and merged"
        return f"aggregate of {p.input}: recomputed whole when an input changes"
    if p.through:
        via = p.lookups[p.through]
        return (f"aggregate of {p.input}: its changed rows rebuild the {spec.partition} partitions of their "
                f"{via.input} rows (through {via.by_column} -> {via.key})")
    return f"aggregate of {p.input}: a changed partition rebuilds the same partition"

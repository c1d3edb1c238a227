"""``lakehouse status``: the state of a lake at a glance, from the Delta logs and ``_meta`` alone (no data file read).

Per landed source: the files landed and not yet ingested (count, bytes, the oldest and how long it has waited), and
those rejected as unreadable. Per table: its version, when it last changed and by which run and stage, rows, files
and bytes (the log's add actions), the last run that looked at it and the last one that succeeded (``_meta.runs``),
and what the next run would do to it (the plan ``lakehouse plan`` prints): nothing, or why it is behind its inputs.

Per partition of a partitioned table: rows, files and bytes; its freshness, the newest event time it holds (the
maximum statistic of the column a time partitioning is taken from) and the run that last rebuilt it and when (data
files are named after the run that wrote them, and each commit says which run made it); the input versions that
commit read; and whether it is complete against its inputs now. A gold partition the next run would rebuild is
behind, with the planner's reason. New bronze rows a silver table has not processed yet are counted per table: which
partitions they reach is known only once they are read.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from lakehouse import bronze, table
from lakehouse.quality import rejected_files
from lakehouse.running import dryrun, runlog
from lakehouse.running.context import RunContext
from lakehouse.spec import Pipeline
from lakehouse.table import Commit, Snapshot, TableFile, TableRef

LAYERS = ("bronze", "silver", "gold", "quarantine")
_RUN_FILE = re.compile(r"^part-(?P<run>.+)-[0-9a-f]{32}\.parquet$")
OK = ("committed", "skipped")


@dataclass(frozen=True)
class Run:
    """A run's last word on a table in ``_meta.runs``."""

    run_id: str
    status: str
    at: str
    message: str


@dataclass(frozen=True)
class PartitionStatus:
    """One partition: its size, its newest event time, the run that last rebuilt it (when, from which input
    versions), and what keeps it from being complete against its inputs (None: nothing; it is complete)."""

    partition: str
    rows: int
    files: int
    bytes: int
    newest: str | None
    rebuilt_by: str | None
    rebuilt_at: str | None
    built_from: dict[str, int]
    behind: str | None


@dataclass(frozen=True)
class TableStatus:
    table: str
    version: int | None
    rows: int
    files: int
    bytes: int
    changed_at: str | None  # when the current version was committed
    changed_by: str | None  # the run that committed it
    change: str  # its stage (bronze, silver, gold, rollback...) or Delta operation
    unrecorded: bool  # the run that committed it has no row for it in _meta.runs (it was cut off before its end)
    last_run: Run | None
    last_ok: Run | None
    next_run: str  # what the next run would do ("" for a table the pipeline does not write)
    why: list[str]
    upstream: list[str]  # the tables it is built from, directly or not, that the next run brings new rows into
    newest: str | None  # the newest event time in the table
    event_column: str | None
    partition_by: list[str]
    partitions: list[PartitionStatus] = field(default_factory=list)

    @property
    def behind(self) -> bool:
        """Does the next run change it?"""
        return _moves(self.next_run)


@dataclass(frozen=True)
class SourceStatus:
    source: str
    raw_dir: str
    pending_files: int
    pending_bytes: int
    oldest_pending: str | None  # when the oldest file waiting was landed
    waiting_seconds: float | None
    unknown_format: int
    rejected: int


@dataclass(frozen=True)
class LakeStatus:
    root: str
    pipeline: str
    at: str
    sources: list[SourceStatus]
    tables: list[TableStatus]

    def as_dict(self) -> dict[str, Any]:
        found = asdict(self)
        for mine, t in zip(found["tables"], self.tables, strict=True):
            mine["behind"] = t.behind
        return found


def status(ctx: RunContext, pipeline: Pipeline) -> LakeStatus:
    """The lake's state now under ``pipeline``: its sources, then its tables in run order (quarantine tables and
    tables the pipeline does not declare last)."""
    storage = ctx.storage
    now = dt.datetime.now(dt.UTC)
    plans = {p.table: p for p in dryrun.describe(ctx, pipeline)}
    upstream = _upstream(pipeline, plans)
    sources = [_source(ctx, pipeline, name, now) for name in pipeline.source_names]
    runs = _runs(ctx)
    found = [str(r) for r in table.list_tables(storage, LAYERS)]
    names = [*plans, *sorted(t for t in found if t not in plans)]
    tables = []
    for name in names:
        ref = TableRef.parse(name)
        snap = table.snapshot(storage, ref)
        if not snap.exists:
            tables.append(TableStatus(
                table=name, version=None, rows=0, files=0, bytes=0, changed_at=None, changed_by=None, change="",
                unrecorded=False,
                last_run=None, last_ok=None, next_run=plans[name].action if name in plans else "",
                why=plans[name].why if name in plans else [], upstream=upstream.get(name, []), newest=None,
                event_column=None, partition_by=[]))
            continue
        tables.append(_table(ctx, pipeline, snap, plans.get(name), runs.get(name, []), upstream.get(name, [])))
    return LakeStatus(root=ctx.settings.root, pipeline=pipeline.name, at=_iso(now), sources=sources, tables=tables)


def _upstream(pipeline: Pipeline, plans: dict[str, dryrun.Planned]) -> dict[str, list[str]]:
    """Per table, the tables upstream of it (inputs, their inputs...) that the next run changes."""
    inputs: dict[str, list[str]] = {}
    for s in pipeline.silver:
        inputs[str(TableRef("silver", s.name))] = [str(bronze.ref(s.source))]
    for c in pipeline.cdc:
        inputs[str(TableRef("silver", c.history))] = [str(bronze.ref(c.source))]
    for g in pipeline.gold:
        inputs[str(TableRef("gold", g.name))] = [str(TableRef(*pipeline.table_of(i))) for i in g.inputs]
    moving = {t for t, p in plans.items() if _moves(p.action)}
    found: dict[str, list[str]] = {}
    for t in plans:  # in run order: a table's inputs come before it
        direct = inputs.get(t, [])
        found[t] = list(dict.fromkeys([*(i for i in direct if i in moving),
                                       *(u for i in direct for u in found.get(i, []))]))
    return found


def _moves(action: str) -> bool:
    return action not in ("", "nothing new") and not action.startswith("up to date")


def _source(ctx: RunContext, pipeline: Pipeline, name: str, now: dt.datetime) -> SourceStatus:
    storage = ctx.storage
    source = pipeline.source(name)
    snap = table.snapshot(storage, bronze.ref(name))
    known = rejected_files.known(storage, name)
    pending, unknown = bronze.pending_files(storage, snap, known, source=source)
    oldest = min((f["mtime_ms"] for f in pending), default=None)
    return SourceStatus(
        source=name, raw_dir=source.raw_dir, pending_files=len(pending),
        pending_bytes=sum(int(f["size"]) for f in pending),
        oldest_pending=None if oldest is None else _iso(_from_ms(oldest)),
        waiting_seconds=None if oldest is None else round(max(0.0, now.timestamp() - oldest / 1000), 1),
        unknown_format=len(unknown), rejected=len(known))


def _runs(ctx: RunContext) -> dict[str, list[Run]]:
    """Each table's rows in ``_meta.runs``, oldest first."""
    if not table.snapshot(ctx.storage, runlog.REF).exists:
        return {}
    rows = table.to_arrow_dataset(ctx.storage, runlog.REF).to_table(
        columns=["run_id", "table_name", "status", "ended_at", "started_at", "message"]).to_pylist()
    found: dict[str, list[Run]] = {}
    for r in sorted(rows, key=lambda r: r["ended_at"] or r["started_at"]):
        when = r["ended_at"] or r["started_at"]
        found.setdefault(r["table_name"], []).append(
            Run(run_id=r["run_id"], status=r["status"], at=_iso(when), message=r["message"] or ""))
    return found


def _table(ctx: RunContext, pipeline: Pipeline, snap: Snapshot, planned: dryrun.Planned | None,
           runs: list[Run], upstream: list[str]) -> TableStatus:
    ref = snap.ref
    commits = table.history(ctx.storage, ref)
    last = commits[-1] if commits else None
    event = _event_column(pipeline, ref)
    behind = _behind_partitions(planned) if ref.layer == "gold" else {}
    partitions = [_partition(snap, label, files, commits, event, behind)
                  for label, files in _by_partition(snap).items()] if snap.partition_by else []
    held = {p.partition for p in partitions}
    partitions += [PartitionStatus(partition=label, rows=0, files=0, bytes=0, newest=None, rebuilt_by=None,
                                   rebuilt_at=None, built_from={}, behind=f"not built yet; {why}")
                   for label, why in (behind or {}).items() if snap.partition_by and label not in held]
    partitions.sort(key=lambda p: p.partition)
    newest = max((p.newest for p in partitions if p.newest), default=None) if partitions else _newest(
        snap.files, event)
    return TableStatus(
        table=str(ref), version=snap.version, rows=sum(f.rows for f in snap.files), files=len(snap.files),
        bytes=sum(f.size for f in snap.files),
        changed_at=None if last is None else _iso(_from_ms(last.timestamp_ms)),
        changed_by=None if last is None else last.run_id,
        change="" if last is None else last.info.get("stage") or last.operation,
        unrecorded=(last is not None and last.run_id is not None and last.info.get("stage") != "maintain"
                    and all(r.run_id != last.run_id for r in runs)),  # maintenance keeps no run record
        last_run=runs[-1] if runs else None,
        last_ok=next((r for r in reversed(runs) if r.status in OK), None),
        next_run=planned.action if planned else "", why=planned.why if planned else [], upstream=upstream,
        newest=newest, event_column=event, partition_by=list(snap.partition_by), partitions=partitions,
    )


def _event_column(pipeline: Pipeline, ref: TableRef) -> str | None:
    """The column whose newest value says how fresh the table is: the one a silver table's time partitioning is
    taken from (None for other tables)."""
    if ref.layer != "silver":
        return None
    spec = next((s for s in pipeline.silver if s.name == ref.name), None)
    if spec is None or spec.partition is None or not spec.partition.time:
        return None
    return spec.partition.source_column


def _behind_partitions(planned: dryrun.Planned | None) -> dict[str, str] | None:
    """The gold partitions the next run rebuilds, with why (None: all of them, or no partition is named)."""
    if planned is None or planned.action.startswith("up to date"):
        return {}
    why = "; ".join(planned.why[:-1]) or planned.action  # the last line is the table's rule, the same for all
    if planned.work:
        return {w: f"the next run rebuilds it: {why}" for w in planned.work}
    return None


def _by_partition(snap: Snapshot) -> dict[str, list[TableFile]]:
    found: dict[str, list[TableFile]] = {}
    for f in snap.files:
        label = "/".join("null" if (v := f.partition_values.get(c)) is None else v for c in snap.partition_by)
        found.setdefault(label, []).append(f)
    return dict(sorted(found.items()))


def _partition(snap: Snapshot, label: str, files: list[TableFile], commits: list[Commit], event: str | None,
               behind: dict[str, str] | None) -> PartitionStatus:
    newest_file = max(files, key=lambda f: f.added_ms)
    run = run_of(newest_file.path)
    made = _commit_of(commits, run, newest_file.added_ms)
    when = made.timestamp_ms if made else newest_file.added_ms
    late = (f"the next run rebuilds every partition of {snap.ref}" if behind is None else behind.get(label))
    return PartitionStatus(
        partition=label, rows=sum(f.rows for f in files), files=len(files), bytes=sum(f.size for f in files),
        newest=_newest(files, event), rebuilt_by=run, rebuilt_at=_iso(_from_ms(when)) if when else None,
        built_from=made.inputs if made else {}, behind=late,
    )


def run_of(path: str) -> str | None:
    """The run that wrote a data file, from its name (``part-<run id>-<uuid>.parquet``); None for a file that is
    not ours."""
    found = _RUN_FILE.match(posixpath.basename(path))
    return found.group("run") if found else None


def _commit_of(commits: list[Commit], run: str | None, written_ms: int) -> Commit | None:
    """The commit that added a file ``run`` wrote at ``written_ms``: that run's first commit after it."""
    return next((c for c in commits if c.run_id == run and c.timestamp_ms >= written_ms), None)


def _newest(files: Iterable[TableFile], column: str | None) -> str | None:
    if column is None:
        return None
    values = [v for f in files if (v := f.maxs.get(column)) is not None]
    if not values:
        return None
    top = max(values)
    return _iso(top) if isinstance(top, dt.datetime) else top.isoformat() if isinstance(top, dt.date) else str(top)


def _from_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def render(st: LakeStatus, *, partitions: int | None = 5) -> str:
    """The status as text: the landing zone, then a block per table, with its newest ``partitions`` partitions and
    every partition that is behind (None: every partition)."""
    out = [f"lake {st.root} (pipeline {st.pipeline}) at {_short(st.at)} (times in UTC)", "",
           "landed, not yet ingested:"]
    for s in st.sources:
        line = f"  {s.source:<24} "
        if s.pending_files:
            line += (f"{s.pending_files} file(s), {_size(s.pending_bytes)}, oldest landed {_short(s.oldest_pending)} "
                     f"({_age(s.waiting_seconds)} ago)")
        else:
            line += f"none (under {s.raw_dir}/)"
        extra = [f"{s.rejected} rejected as unreadable (_meta.rejected_files)"] if s.rejected else []
        extra += [f"{s.unknown_format} of unknown format, ignored"] if s.unknown_format else []
        out.append(line + (f"; {'; '.join(extra)}" if extra else ""))
    for t in st.tables:
        out += ["", *_table_lines(t, partitions)]
    return "\n".join(out)


def _table_lines(t: TableStatus, partitions: int | None) -> list[str]:
    if t.version is None:
        lines = [f"{t.table}: not created yet"]
    else:
        lines = [f"{t.table}: version {t.version}, {t.rows:,} rows in {t.files} file(s), {_size(t.bytes)}"
                 + (f", newest {t.event_column} {_short(t.newest)}" if t.newest else "")]
        by = f"run {t.changed_by}" if t.changed_by else "a writer other than lakehouse"
        cut = "; it has no record in _meta.runs: cut off before its end?" if t.unrecorded else ""
        lines.append(f"    changed   {_short(t.changed_at)} by {by} ({t.change}{cut})")
    if t.last_run:
        r = t.last_run
        said = f": {r.message}" if r.message and r.status != "committed" else ""
        lines.append(f"    last run  {r.run_id} {r.status} at {_short(r.at)}{said}"[:200])
        if t.last_ok and t.last_ok is not r:
            lines.append(f"    last ok   {t.last_ok.run_id} {t.last_ok.status} at {_short(t.last_ok.at)}")
    if t.next_run:
        waits = f" (but {', '.join(t.upstream)} will change first)" if t.upstream and not t.behind else ""
        lines.append(f"    next run  {t.next_run}{waits}")
        if t.behind:
            lines += [f"        {why}" for why in (t.why[:-1] if t.table.startswith("gold.") else t.why)]
    if t.partitions:
        lines.append(f"    {len(t.partitions)} partition(s) by {', '.join(t.partition_by)}:")
        shown = t.partitions if partitions is None else [
            p for i, p in enumerate(t.partitions) if p.behind or i >= len(t.partitions) - partitions]
        if len(shown) < len(t.partitions):
            lines.append(f"      ({len(t.partitions) - len(shown)} older partition(s) not shown, none of them behind; "
                         "--partitions all shows them)")
        for p in shown:
            fresh = f"newest {_short(p.newest)}  " if p.newest else ""
            source = ", ".join(f"{k} v{v}" for k, v in sorted(p.built_from.items()))
            state = f"behind: {p.behind}" if p.behind else "" if not t.table.startswith("gold.") else (
                "complete" if not t.upstream else "complete as of its inputs")
            if not p.files:
                lines.append(f"      {p.partition:<12} {p.behind}")
                continue
            lines.append(f"      {p.partition:<12} {p.rows:>10,} rows {p.files:>4} file(s) {_size(p.bytes):>9}  {fresh}"
                         f"by {p.rebuilt_by or '?'} at {_short(p.rebuilt_at)}"
                         + (f" from {source}" if source else "") + (f"  {state}" if state else ""))
    return lines


def _short(iso: str | None) -> str:
    return "-" if not iso else iso.replace("T", " ").removesuffix("Z")


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"

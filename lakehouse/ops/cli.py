"""The ``lakehouse`` command: run the pipeline, generate demo data, query tables.

The CLI is an edge: it builds the settings once from its arguments and the environment, then calls the same library
functions the Prefect flow calls. It needs no Prefect server.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Any

from lakehouse.errors import ConfigError, LakehouseError
from lakehouse.ops import maintenance, query
from lakehouse.ops.progress import Progress
from lakehouse.running import runner
from lakehouse.settings import Settings, settings_from_env
from lakehouse.storage import Storage

PIPELINE_HELP = "a pipeline name, module:attr or path/to/pipeline.py (default: tpch)"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args))
    except LakehouseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (`lakehouse run --json | head -1`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lakehouse", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log each stage")
    sub = p.add_subparsers(required=True, dest="command")

    run = sub.add_parser("run", help="process everything landed and not yet processed: bronze → silver → gold")
    run.add_argument("--root", help="local path or s3://bucket/prefix (default: $LAKEHOUSE_ROOT or lakehouse-data)")
    run.add_argument("--pipeline", default=None, help=PIPELINE_HELP)
    run.add_argument("--full-refresh", action="store_true", help="rebuild silver and gold from bronze")
    run.add_argument("--logical-date", type=_date, default=None, metavar="YYYY-MM-DD",
                     help="the date the run is for; freshness checks measure against it (default today)")
    run.add_argument("--bad-files", choices=("reject", "fail"), default=None,
                     help="unreadable landed files: record them in _meta.rejected_files and go on (default), or fail")
    _output_flags(run)
    run.set_defaults(func=_run)

    bf = sub.add_parser("backfill", help="rebuild silver and gold for a range of months from bronze")
    bf.add_argument("--from", dest="first", required=True, metavar="YYYY-MM", help="first month rebuilt")
    bf.add_argument("--to", dest="last", required=True, metavar="YYYY-MM", help="last month rebuilt")
    bf.add_argument("--batch-months", type=int, default=12, help="months per commit (default 12)")
    bf.add_argument("--root")
    bf.add_argument("--pipeline", default=None, help=PIPELINE_HELP)
    _output_flags(bf)
    bf.set_defaults(func=_backfill)

    data = sub.add_parser("demo-data", help="land the pipeline's demo data under ROOT/raw (TPC-H: tpchgen-cli)")
    data.add_argument("--root")
    data.add_argument("--pipeline", default=None, help=PIPELINE_HELP)
    data.add_argument("--scale-factor", type=float, default=None, help="tpch: TPC-H scale factor (default 0.1)")
    data.add_argument("--seed", type=int, default=None, help="the random seed (shuffles rows in tpch's files)")
    data.add_argument("--parts-per-month", type=int, default=None, help="tpch: files per month (default 1)")
    data.add_argument("--months", type=int, default=None, help="tpch: land only the first N order months")
    data.add_argument("--cdc-events", type=int, default=None,
                      help="also land N Debezium change events of customers under ROOT/raw/customer_cdc")
    data.add_argument("--cdc-files", type=int, default=None, help="tpch: spread over this many files (default 4)")
    data.add_argument("--days", type=int, default=None, help="events: days of events (default 14)")
    data.add_argument("--users", type=int, default=None, help="events: users (default 2000)")
    data.add_argument("--events-per-day", type=int, default=None, help="events: events a day (default 5000)")
    data.add_argument("--skew", type=float, default=None, help="events: the share of events one user owns")
    data.set_defaults(func=_demo_data)

    init = sub.add_parser("init", help="write a runnable project: lakehouse.toml, a pipeline, its models, prefect.yaml")
    init.add_argument("directory")
    init.add_argument("--example", choices=("events", "tpch", "empty"), default="events",
                      help="start from an example with demo data, or from a skeleton (default events)")
    init.set_defaults(func=_init)

    pl_ = sub.add_parser("plan", help="what a run would do now, per table and why (nothing is read or written)")
    pl_.add_argument("--root")
    pl_.add_argument("--pipeline", default=None, help=PIPELINE_HELP)
    pl_.add_argument("--full-refresh", action="store_true")
    pl_.add_argument("--format", choices=("text", "json"), default="text")
    pl_.set_defaults(func=_plan)

    sw = sub.add_parser("sweep", help="delete files that no table version refers to (left by crashed runs)")
    sw.add_argument("--root")
    sw.add_argument("--retention-hours", type=float, default=24.0,
                    help="only files older than this; longer than the longest run (default 24)")
    sw.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    sw.set_defaults(func=_sweep)

    mt = sub.add_parser("maintain", help="compact small files (sorted by the tables' keys), checkpoint, clean the "
                        "logs, vacuum, and record each table's health in _meta.table_health")
    mt.add_argument("--root")
    mt.add_argument("--pipeline", default=None, help=PIPELINE_HELP)
    mt.add_argument("--table", action="append", default=None, metavar="LAYER.NAME", help="only this table (repeatable)")
    mt.add_argument("--retention-hours", type=float, default=168.0,
                    help="vacuum files removed longer ago than this (time travel keeps working within it; longer "
                         "than the longest run; default 168, a week)")
    mt.add_argument("--no-compact", action="store_true", help="checkpoint, clean and vacuum only")
    mt.add_argument("--dry-run", action="store_true", help="say what would be compacted; change nothing")
    mt.add_argument("--format", choices=("text", "json"), default="text")
    mt.set_defaults(func=_maintain)

    st = sub.add_parser("status", help="the state of the lake: landed files waiting, each table and its partitions "
                        "(freshness, who rebuilt them, complete or behind), from the logs alone")
    st.add_argument("--root")
    st.add_argument("--pipeline", default=None, help=PIPELINE_HELP)
    st.add_argument("--table", action="append", default=None, metavar="LAYER.NAME",
                    help="only this table (repeatable)")
    st.add_argument("--partitions", default="5", metavar="N|all",
                    help="text: the newest N partitions of each table, and every one that is behind (default 5)")
    st.add_argument("--format", choices=("text", "json"), default="text")
    st.set_defaults(func=_status)

    rb = sub.add_parser("rollback", help="undo a whole run: every table it committed to back to the version before it")
    rb.add_argument("run_id", metavar="RUN_ID", help="the run (see _meta.runs, or `lakehouse status`)")
    rb.add_argument("--root")
    rb.add_argument("--pipeline", default=None, help=PIPELINE_HELP)
    rb.add_argument("--cascade", action="store_true",
                    help="also roll back the later runs built on it (otherwise they make the rollback refuse)")
    rb.add_argument("--dry-run", action="store_true", help="say what would be restored, change nothing")
    rb.add_argument("--format", choices=("text", "json"), default="text")
    rb.set_defaults(func=_rollback)

    q = sub.add_parser("query", help="SQL (DuckDB) over the tables, addressed as layer.table")
    q.add_argument("sql")
    q.add_argument("--root")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table")
    q.set_defaults(func=_query)

    qu = sub.add_parser("quarantine", help="quarantined rows")
    qsub = qu.add_subparsers(dest="action", required=True)
    rp = qsub.add_parser("replay", help="re-validate a table's quarantined rows with its model as it is now; merge "
                                        "those that pass into silver, then update gold")
    rp.add_argument("--table", required=True, help="silver table, e.g. orders")
    rp.add_argument("--root")
    rp.add_argument("--pipeline", default=None, help=PIPELINE_HELP)
    _output_flags(rp)
    rp.set_defaults(func=_replay)
    return p


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    if getattr(args, "pipeline", None):
        overrides["pipeline"] = args.pipeline
    return settings_from_env(args.root, **overrides)


def _run(args: argparse.Namespace) -> int:
    overrides = {"bad_files": args.bad_files} if args.bad_files else {}
    settings = _settings(args, **overrides)
    progress = _progress(args)
    return progress.done(runner.run(settings, full_refresh=args.full_refresh, logical_date=args.logical_date,
                                    call=progress))


def _backfill(args: argparse.Namespace) -> int:
    settings = _settings(args)
    progress = _progress(args)
    return progress.done(runner.backfill(settings, args.first, args.last, batch_months=args.batch_months,
                                         call=progress))


def _progress(args: argparse.Namespace) -> Progress:
    return Progress("json" if args.json else "quiet" if args.quiet else "text", every=args.progress_every)


def _output_flags(parser: argparse.ArgumentParser) -> None:
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--quiet", action="store_true", help="print nothing but an error")
    how.add_argument("--json", action="store_true", help="one JSON object per finished stage, then one for the run")
    parser.add_argument("--progress-every", type=float, default=10.0, metavar="SECONDS",
                        help="not on a terminal: a line of a long stage's progress every SECONDS (default 10)")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from e


def _replay(args: argparse.Namespace) -> int:
    settings = _settings(args)
    progress = _progress(args)
    return progress.done(runner.replay(settings, args.table, call=progress))


def _demo_data(args: argparse.Namespace) -> int:
    settings = _settings(args)
    pipeline = runner.pipeline_of(settings)
    if not pipeline.demo:
        raise ConfigError(f"pipeline {pipeline.name} declares no demo data (Pipeline(demo='module:function'))")
    module, _, name = pipeline.demo.partition(":")
    generate = getattr(importlib.import_module(module), name)
    options = {"scale_factor": args.scale_factor, "seed": args.seed, "parts_per_month": args.parts_per_month,
               "months": args.months, "cdc_events": args.cdc_events, "cdc_files": args.cdc_files,
               "days": args.days, "users": args.users, "events_per_day": args.events_per_day, "skew": args.skew}
    accepted = inspect.signature(generate).parameters
    given = {k: v for k, v in options.items() if v is not None}
    unknown = [k for k in given if k not in accepted]
    if unknown:
        raise ConfigError(f"the demo data of pipeline {pipeline.name} takes no --{unknown[0].replace('_', '-')}")
    landed = generate(Storage.from_settings(settings), **{k: v for k, v in given.items() if k in accepted})
    print(f"landed {landed.written} new files under {settings.root}/raw ({landed.skipped} already there)")
    return 0


def _init(args: argparse.Namespace) -> int:
    from lakehouse.ops import project

    written = project.init(args.directory, args.example)
    base = Path(args.directory).resolve()
    files = ", ".join(str(p.relative_to(base)) for p in written)
    print(f"wrote a {args.example} project in {args.directory}: {files}")
    print(f"next: cd {args.directory} && lakehouse demo-data && lakehouse run"
          if args.example != "empty" else f"next: cd {args.directory}, land files under lakehouse-data/raw/orders/, "
          "then lakehouse run")
    return 0


def _plan(args: argparse.Namespace) -> int:
    import json

    from lakehouse.running import dryrun
    from lakehouse.running.context import RunContext

    settings = _settings(args)
    ctx = RunContext.start(settings, full_refresh=args.full_refresh, read_only=True)
    planned = dryrun.describe(ctx, runner.pipeline_of(settings))
    if args.format == "json":
        print(json.dumps([p.as_dict() for p in planned], indent=2))
        return 0
    for p in planned:
        print(f"{p.table:<34} {p.action}")
        for w in p.work[:5]:
            print(f"    {w}")
        if len(p.work) > 5:
            print(f"    ... and {len(p.work) - 5} more")
        for why in p.why:
            print(f"    why: {why}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    storage = Storage.from_settings(settings_from_env(args.root))
    found = maintenance.sweep(storage, retention_seconds=args.retention_hours * 3600, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for name, paths in sorted(found.files.items()):
        print(f"{name}: {verb} {len(paths)} orphaned files")
    for run_id in found.staging:
        print(f"_staging/{run_id}: {verb} (run never finished)")
    print(f"{verb} {found.count} files ({found.bytes} bytes) and {len(found.staging)} staging directories")
    return 0


def _maintain(args: argparse.Namespace) -> int:
    import json

    found = runner.maintain(_settings(args), retention_hours=args.retention_hours, compact=not args.no_compact,
                            tables=tuple(args.table or ()), dry_run=args.dry_run)
    if args.format == "json":
        print(json.dumps(found.as_dict(), indent=2))
        return 0
    for t in found.tables:
        vacuumed = f", vacuumed {t.vacuumed} files" if t.vacuumed else ""
        print(f"{t.table}: {t.outcome} ({t.files_before} -> {t.files_after} files{vacuumed})")
    print(f"maintained {len(found.tables)} tables in {found.seconds:.1f}s; removed {found.orphans} orphaned files; "
          f"health in _meta.table_health")
    return 0


def _status(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from lakehouse.ops import status
    from lakehouse.running.context import RunContext

    shown = None if args.partitions == "all" else _count(args.partitions, "--partitions")
    settings = _settings(args)
    found = status.status(RunContext.start(settings, read_only=True), runner.pipeline_of(settings))
    if args.table:
        unknown = [t for t in args.table if t not in {t.table for t in found.tables}]
        if unknown:
            raise ConfigError(f"no table {unknown[0]} in {settings.root} (tables: "
                              f"{', '.join(t.table for t in found.tables)})")
        found = dataclasses.replace(found, tables=[t for t in found.tables if t.table in args.table])
    if args.format == "json":
        print(json.dumps(found.as_dict(), indent=2))
    else:
        print(status.render(found, partitions=shown))
    return 0


def _count(text: str, flag: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"{flag} takes a number or 'all', not {text!r}")
    return int(text)


def _rollback(args: argparse.Namespace) -> int:
    import json

    from lakehouse.running import rollback

    settings = _settings(args)
    if args.dry_run:
        planned = rollback.plan(Storage.from_settings(settings), args.run_id, cascade=args.cascade)
        if args.format == "json":
            print(json.dumps(planned.as_dict(), indent=2))
            return 1 if planned.refusal() else 0
        print(f"rollback of run(s) {', '.join(planned.runs)} would:")
        for step in planned.steps:
            print(f"  restore {step.describe()}")
            for app, (now, after) in sorted(step.watermarks.items()):
                if now != after:
                        print(f"      watermark {app}: {_mark(now)} -> {_mark(after)}")
        for name in planned.done:
            print(f"  leave {name}: already rolled back")
        refusal = planned.refusal()
        if refusal:
            print(f"error: {refusal}", file=sys.stderr)
            return 1
        return 0

    def said(step: rollback.Step, result: Any) -> None:
        if args.format == "json":
            print(json.dumps({"table": step.table, "status": result.status, "version": result.version,
                              "restored_to": step.restore_to, "undone": list(step.undone), "runs": list(step.runs),
                              "seconds": round(result.seconds, 3)}), flush=True)
        else:
            print(f"{step.table:<34} {result.status:<12} version={result.version:<4} {result.message}", flush=True)

    report = rollback.rollback(settings, args.run_id, cascade=args.cascade, call=said)
    done = report.plan.done
    if args.format == "json":
        print(json.dumps({"rollback_id": report.run_id, "runs": list(report.plan.runs), "ok": report.ok,
                          "tables": len(report.results), "already_rolled_back": list(done),
                          "error": None if report.error is None else str(report.error)}))
    if report.error is not None:
        print(f"error: {report.error}", file=sys.stderr)
        return 1
    if args.format == "text":
        if not report.results:
            print(f"run {args.run_id} is already rolled back ({', '.join(done)})")
        else:
            extra = f"; {len(done)} were already rolled back" if done else ""
            print(f"rollback {report.run_id} done: {len(report.results)} tables restored{extra}; the next run redoes "
                  f"what run(s) {', '.join(report.plan.runs)} did with the files still landed")
    return 0


def _mark(value: int | None) -> str:
    return "none" if value is None else str(value)


def _query(args: argparse.Namespace) -> int:
    storage = Storage.from_settings(settings_from_env(args.root))
    print(query.render(query.query(storage, args.sql), args.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())

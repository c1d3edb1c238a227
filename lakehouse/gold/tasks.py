"""Gold on the workers: a task reads its rows, calls the user's function with the lookups it asks for, checks the
result against the table's model and writes it. Each task returns typed reports (:class:`Written`,
:class:`Staged`); data never goes back to the driver.

* :func:`partition_task` (``per_partition``): one output partition from one partition (or window) of the input.
* :func:`partial_task` (``aggregate``): the partial aggregate of one input file, staged in hash buckets of the
  routing columns (the output's partition column, or ``by``), heavy keys where :mod:`.salting` places them.
* :func:`final_task` (``aggregate``): one bucket's partials through ``final``, written to the table, or staged as
  the source of a MERGE on the table's keys (with deletes for the keys that no longer have a row); the salted keys'
  rows go to :func:`merge_slices`, the final tasks' reduce.
* :func:`split_lookup`: a lookup of ``final`` too large to broadcast, split by final bucket (a hash join).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl
import pyarrow as pa

from lakehouse import engine
from lakehouse.errors import SchemaMismatch, TransformError
from lakehouse.gold import salting
from lakehouse.quality.validation import output_failures
from lakehouse.spec import Aggregate, Lookup, PerPartition
from lakehouse.spec.plans import Transform, parameters
from lakehouse.storage import Storage
from lakehouse.storage.files import DataFile, partition_value, write_data_file
from lakehouse.storage.frames import partition_literal, read_files, to_arrow, without, write_frame
from lakehouse.table import ranges

DELETE = "__delete"
BUCKET = "__bucket"
BUCKET_KEY = "__bucket_key"


@dataclass(frozen=True)
class Written:
    """A data file a task wrote into the gold table (uncommitted)."""

    file: DataFile


@dataclass(frozen=True)
class Staged:
    """A file of partial rows for final bucket ``bucket`` (or, bucket -1, of MERGE source rows)."""

    bucket: int
    file: DataFile


@dataclass(frozen=True)
class Finished:
    """A final task's load: the partial rows it finished (``bucket``; -1 for the merge of salted keys) and their
    in-memory bytes (Polars' estimate), the figures by which the final step's balance is judged."""

    bucket: int
    rows: int
    bytes: int


@dataclass(frozen=True)
class Sliced:
    """The output rows one final task gave for salted keys (a slice of each), on their way to the merge."""

    rows: pl.DataFrame


@dataclass(frozen=True)
class HotRows:
    """The partial rows of a hot key (:attr:`salting.HotKey.key`) that one partial task routed to the final step."""

    key: str
    rows: int


@dataclass(frozen=True)
class Found:
    """A partition value a task found (the output partitions changed rows map to)."""

    value: str | None


Report = Written | Staged | Finished | HotRows | Sliced


@dataclass(frozen=True)
class Table:
    """How a task reads an input table: where it is, its partition column and type, and its schema (the declared
    one while the table does not exist yet, so an absent lookup is an empty frame of the right columns)."""

    name: str
    rel: str
    schema: dict[str, Any]
    partition: str | None = None

    def empty(self, columns: list[str] | None = None) -> pl.DataFrame:
        names = columns if columns is not None else list(self.schema)
        return pl.DataFrame(schema={c: self.schema[c] for c in names if c in self.schema})

    def read(self, storage: Storage, files: list[dict[str, Any]], columns: list[str] | None = None,
             where: pl.Expr | None = None) -> pl.DataFrame:
        """The rows of ``files``, the partition column added back, ``where`` applied to each file as it is read."""
        types = {self.partition: self.schema[self.partition]} if self.partition else {}
        frames = []
        for f in files:
            df = read_files(storage, self.rel, [f], columns=columns, partition_types=types)
            frames.append(df.filter(where) if where is not None else df)
        frames = [f for f in frames if f.width]
        if not frames:
            return self.empty(columns)
        return pl.concat(frames, how="diagonal_relaxed")


@dataclass(frozen=True)
class LookupInput:
    """A lookup as tasks get it: broadcast (``ref``: the frame in the object store) or read in each task filtered to
    the keys it needs (``files``: the table's files with their key ranges)."""

    name: str
    table: Table
    lookup: Lookup
    ref: Any = None
    files: tuple[dict[str, Any], ...] = ()
    staged: str = ""  # co-partitioned with the final step: its rows staged here by bucket (see split_lookup)
    rows: pl.DataFrame | None = None

    def frame(self, storage: Storage, rows: pl.DataFrame, fn: Transform) -> pl.DataFrame:
        lk = self.lookup
        if self.rows is not None:
            return self.rows
        if self.ref is not None:
            return engine.fetch(self.ref)
        assert lk.key is not None and lk.by_column is not None
        if lk.by_column not in rows.columns:
            raise TransformError(f"lookup {self.name!r} is read by the keys in column {lk.by_column!r}, which the rows "
                                 f"given to {fn.__qualname__} lack (they have: {', '.join(rows.columns)})",
                                 table=self.table.name)
        keys = rows.get_column(lk.by_column).drop_nulls().unique()
        dtype = self.table.schema.get(lk.key)
        if dtype is not None and keys.dtype != dtype:
            keys = keys.cast(dtype, strict=False)
        wanted = [f for f in self.files if keys.len() and ranges.may_hold(f, keys)]
        where = pl.col(lk.key).is_in(keys.implode())
        return self.table.read(storage, wanted, lk.read_columns(), where if lk.where is None else where & lk.where)


def split_lookup(item: dict[str, Any], *, storage: Storage, lookup: LookupInput, route: str, buckets: int,
                 routing: salting.Routing | None, staging: str, touched: Any = None) -> list[Report]:
    """A file of a lookup too large to broadcast, split by the final bucket of its key (hashed as the partial rows'
    routing column it is joined to), so that each final task reads only its bucket's rows: a hash-partitioned join.
    A salted key's rows go to every task holding one of its slices (replicated), a placed key's to its task."""
    lk = lookup.lookup
    assert lk.key is not None
    df = lookup.table.read(storage, item["files"], lk.read_columns(), lk.where)
    if not df.height:
        return []
    clash = route in df.columns and route != lk.key  # a column of the lookup named like the routing column
    keyed = (df.rename({route: BUCKET_KEY}) if clash else df).with_columns(pl.col(lk.key).alias(route))
    if touched is not None:  # a MERGE of the keys that changed: only their rows are looked up
        keys: pl.DataFrame = engine.fetch(touched)
        keyed = keyed.join(keys.select(pl.col(route).cast(keyed.schema[route], strict=False)), on=route, how="semi",
                           nulls_equal=True)
    hashed = salting.replicate(keyed, routing, bucket_of([route], buckets, {route: df.schema[lk.key]}), BUCKET)
    if route != lk.key:
        hashed = hashed.drop(route)
    if clash:
        hashed = hashed.rename({BUCKET_KEY: route})
    out: list[Report] = []
    for (b,), part in hashed.partition_by(BUCKET, as_dict=True, include_key=False).items():
        out.append(Staged(int(b), write_data_file(storage, staging, part.to_arrow(), prefix=f"l{b}", stats=False)))
    return out


def read_lookup(storage: Storage, table: Table, files: list[dict[str, Any]], lk: Lookup) -> pl.DataFrame:
    """A whole lookup (its declared columns and rows), read on a worker to be broadcast."""
    return table.read(storage, files, lk.read_columns(), lk.where)


def distinct_keys(storage: Storage, table: Table, files: list[dict[str, Any]], columns: list[str]) -> pl.DataFrame:
    """The distinct values of ``columns`` in ``files`` (removed files included: they stay on storage until vacuumed)."""
    frames = [table.read(storage, [f], columns).unique() for f in files]
    frames = [f for f in frames if f.height]
    return pl.concat(frames).unique() if frames else table.empty(columns)


@dataclass(frozen=True)
class Output:
    """The gold table as tasks write it: the model is its contract (columns, types, rules)."""

    name: str
    rel: str
    model: Any
    schema: pa.Schema
    partition: str | None
    keys: tuple[str, ...]
    run_id: str
    max_rows: int

    @property
    def dtypes(self) -> dict[str, Any]:
        from lakehouse.quality.validation import model_dtypes

        return model_dtypes(self.model)


def call(fn: Transform, rows: pl.DataFrame, lookups: dict[str, LookupInput], storage: Storage,
         out: Output) -> pl.DataFrame:
    """``fn(rows, **the lookups it names)``; its result must be a Polars DataFrame."""
    _, wanted = parameters(fn)
    kwargs = {name: lookups[name].frame(storage, rows, fn) for name in wanted}
    result = fn(rows, **kwargs)
    if isinstance(result, pl.LazyFrame):
        result = result.collect()
    if not isinstance(result, pl.DataFrame):
        raise TransformError(f"{fn.__qualname__} returned a {type(result).__name__}, not a polars DataFrame",
                             table=out.name)
    return result


def conform(df: pl.DataFrame, out: Output, fn: Transform, *, partition: str | None = None,
            allowed: frozenset[str | None] | None = None, rules: bool = True) -> pl.DataFrame:
    """The transform's result as the model says: every column of the model (and no other) cast to its type, its
    rules checked (``rules``; else by :func:`check_rules` later, once for several results); in the output partition
    the task builds (``partition``), or one of those being replaced (``allowed``)."""
    dtypes = out.dtypes
    if partition is not None and out.partition and out.partition not in df.columns:
        df = df.with_columns(partition_literal(partition, dtypes[out.partition]).alias(out.partition))
    missing = [c for c in dtypes if c not in df.columns]
    extra = [c for c in df.columns if c not in dtypes]
    if missing:
        raise SchemaMismatch(f"the output of {fn.__qualname__} lacks column {missing[0]!r} of model "
                             f"{out.model.__name__} (it has: {', '.join(df.columns)})", table=out.name,
                             column=missing[0])
    if extra:
        raise SchemaMismatch(f"{fn.__qualname__} returned column {extra[0]!r}, which model {out.model.__name__} does "
                             "not declare", table=out.name, column=extra[0])
    try:
        df = df.select(pl.col(c).cast(t, strict=True) for c, t in dtypes.items())
    except pl.exceptions.PolarsError as e:
        column = next((c for c, t in dtypes.items() if df.schema[c] != t and not _casts(df, c, t)), "?")
        raise SchemaMismatch(f"{fn.__qualname__} returned column {column!r} as {df.schema.get(column)}, which does not "
                             f"cast to {dtypes.get(column)} ({type(e).__name__})", table=out.name,
                             column=column) from e
    if out.partition and (partition is not None or allowed is not None):
        values = {partition_value(v) for v in df.get_column(out.partition).unique().to_list()}
        ok = {partition} if partition is not None else set(allowed or ())
        stray = sorted(str(v) for v in values - ok)
        if stray:
            raise TransformError(f"{fn.__qualname__} returned rows of partition {out.partition}={stray[0]}, which this "
                                 "task does not build (a per_partition transform returns rows of its own partition; an "
                                 "aggregate only of the partitions its input rows map to)", table=out.name)
    return check_rules(df, out, fn) if rules else df


def check_rules(df: pl.DataFrame, out: Output, fn: Transform) -> pl.DataFrame:
    """The model's rules on conformed rows (pandera costs ~10 ms a call whatever the rows: once per task), and the
    keys unique."""
    failures = output_failures(df, out.model)
    if failures is not None:
        first = failures.row(0, named=True)
        raise TransformError(f"the output of {fn.__qualname__} fails model {out.model.__name__}: check "
                             f"{first['check']} on column {first['column']} (value {first['value']!r}), "
                             f"{failures.height} failure(s)", table=out.name, column=first["column"],
                             check=first["check"])
    if out.keys:
        dup = df.group_by(list(out.keys)).len().filter(pl.col("len") > 1)
        if dup.height:
            key = ", ".join(f"{k}={dup.row(0, named=True)[k]!r}" for k in out.keys)
            raise TransformError(f"{fn.__qualname__} returned {dup.height} key(s) more than once, e.g. {key}; the keys "
                                 f"{', '.join(out.keys)} must identify a row", table=out.name)
    return df


def _casts(df: pl.DataFrame, column: str, dtype: Any) -> bool:
    try:
        df.get_column(column).cast(dtype, strict=True)
        return True
    except pl.exceptions.PolarsError:
        return False


def write(storage: Storage, out: Output, df: pl.DataFrame) -> list[Report]:
    """Write the conformed rows into the table, one set of files per partition."""
    sort = [c for c in (out.keys or df.columns) if c != out.partition]
    if not out.partition:
        return [Written(f) for f in write_frame(storage, out.rel, df.sort(sort), out.schema,
                                                 prefix=f"part-{out.run_id}", max_rows=out.max_rows)]
    file_schema = without(out.schema, [out.partition])
    written: list[Report] = []
    for (value,), part in df.partition_by(out.partition, as_dict=True, include_key=False).items():
        written += [Written(f) for f in write_frame(storage, out.rel, part.sort(sort), file_schema,
                                                     partition_values={out.partition: partition_value(value)},
                                                     prefix=f"part-{out.run_id}", max_rows=out.max_rows)]
    return written


# --- the tasks ----------------------------------------------------------------------------------------------------


def partition_task(item: dict[str, Any], *, storage: Storage, plan: PerPartition, source: Table,
                   lookups: dict[str, LookupInput], out: Output) -> list[Report]:
    """A few output partitions (``item["partitions"]``), each from the input files of its partition or window, the
    model's rules checked once over all of them."""
    columns = list(plan.columns) if plan.columns is not None else None
    results = []
    for part in item["partitions"]:
        rows = source.read(storage, part["files"], columns)
        result = call(plan.transform, rows, lookups, storage, out)
        results.append(conform(result, out, plan.transform, partition=part["partition"], rules=False))
    if not results:
        return []
    return write(storage, out, check_rules(pl.concat(results), out, plan.transform))


def partial_task(item: dict[str, Any], *, storage: Storage, plan: Aggregate, source: Table,
                 lookups: dict[str, LookupInput], out: Output, route: list[str], buckets: int, staging: str,
                 touched: Any = None, routing: salting.Routing | None = None) -> list[Report]:
    """The partial aggregate of one input file, staged by final task: by a hash of the routing columns, or where the
    ``routing`` places a key (a salted key's rows over its slices)."""
    columns = list(plan.columns) if plan.columns is not None else None
    rows = source.read(storage, item["files"], columns)
    if touched is not None:  # a MERGE of the keys that changed: only their rows count
        keys: pl.DataFrame = engine.fetch(touched)
        rows = rows.join(keys, on=list(keys.columns), how="semi", nulls_equal=True)
    partials = call(plan.partial, rows, lookups, storage, out)
    missing = [c for c in route if c not in partials.columns]
    if missing:
        raise TransformError(f"the partial rows of {plan.partial.__qualname__} lack column {missing[0]!r}, by which "
                             "they reach the final step", table=out.name, column=missing[0])
    if not partials.height:
        return []
    if routing is not None:
        missing = [c for c in routing.salt_by if c not in partials.columns]
        if missing:
            raise TransformError(f"the partial rows of {plan.partial.__qualname__} lack column {missing[0]!r}, by "
                                 "which a hot key's rows are salted (salt_by)", table=out.name, column=missing[0])
    dtypes = engine.fetch(touched).schema if touched is not None else None
    hot: dict[str, int] = {}
    if buckets == 1:
        parts = [(0, partials)]
    else:
        hashed, hot = salting.assign_counting(partials, routing, bucket_of(route, buckets, dtypes or partials.schema),
                                              BUCKET)
        parts = [(int(b), part) for (b,), part in hashed.partition_by(BUCKET, as_dict=True, include_key=False).items()]
    staged: list[Report] = [HotRows(k, n) for k, n in hot.items()]
    for b, part in parts:
        f = write_data_file(storage, staging, part.to_arrow(), prefix=f"b{b}", stats=False)
        staged.append(Staged(b, f))
    return staged


def bucket_of(route: list[str], buckets: int, dtypes: Any) -> pl.Expr:
    """The final bucket of a row, by a hash of its routing columns, typed ``dtypes`` (those of the frame hashed, or
    those to cast it to, so that the keys a MERGE deletes hash as their partial rows did). Integers hash as Int64, so
    that a lookup's key hashes as the partial rows' column it is joined to, whatever their widths."""
    cols = [pl.col(c).cast(pl.Int64 if dtypes[c].is_integer() else dtypes[c]) for c in route]
    return (pl.struct(cols).hash(seed=0) % buckets).cast(pl.Int64)


def final_task(item: dict[str, Any], *, storage: Storage, plan: Aggregate, lookups: dict[str, LookupInput],
               out: Output, staging: str, mode: Literal["write", "merge"], route: list[str], buckets: int,
               allowed: list[str | None] | None = None, touched: Any = None, merge_rel: str = "",
               routing: salting.Routing | None = None) -> list[Report]:
    """One bucket's partial rows through ``final``: written to the table, or (``merge``) staged as MERGE source rows,
    with a delete for each touched key of the bucket that has no row any more. The output rows of salted keys (a
    slice of each) go to :func:`merge_slices` instead, through the object store (:class:`Sliced`)."""
    files = [{"path": p, "partition_values": {}} for p in item["files"]]
    lookups = {**lookups, **{name: dataclasses.replace(lookups[name], rows=_bucket_rows(storage, lookups[name], paths))
                             for name, paths in item.get("lookups", {}).items()}}
    load = Finished(item["bucket"], 0, 0)
    if files:
        partials = read_files(storage, staging, files)
        for name in item.get("lookups", {}):
            _same_hash(lookups[name], partials.schema.get(route[0]), out)
        load = Finished(item["bucket"], partials.height, int(partials.estimated_size()))
        result = call(plan.final, partials, lookups, storage, out)
        del partials
        df = conform(result, out, plan.final, allowed=frozenset(allowed) if allowed is not None else None,
                     rules=False)
    else:
        df = pl.DataFrame(schema=out.dtypes)
    reports: list[Report] = [load]
    salted = routing.salted(out.dtypes) if routing is not None and routing.any_salted else None
    if salted is not None:
        assert routing is not None
        sliced = df.join(salted, on=routing.out, how="semi", nulls_equal=True)
        df = df.join(salted, on=routing.out, how="anti", nulls_equal=True)
        if sliced.height:
            reports.append(Sliced(sliced))
    df = check_rules(df, out, plan.final)
    if mode == "write":
        return reports + write(storage, out, df)
    keys = list(out.keys)
    gone: pl.DataFrame = engine.fetch(touched)
    if buckets > 1:
        gone = salting.assign(gone, routing, bucket_of(route, buckets, gone.schema), BUCKET)
        gone = gone.filter(pl.col(BUCKET) == item["bucket"]).drop(BUCKET)
    gone = gone.select(pl.col(k).cast(out.dtypes[k]) for k in keys)
    gone = gone.join(df.select(keys), on=keys, how="anti", nulls_equal=True)
    if salted is not None:  # the merge step answers for them
        gone = gone.join(salted, on=keys, how="anti", nulls_equal=True)
    return reports + _merge_source(storage, out, df, gone, merge_rel, f"merge-{item['bucket']}")


def _same_hash(lk: LookupInput, dtype: Any, out: Output) -> None:
    """A lookup split by the hash of its key is joined right only if the partial rows' column hashes alike: the same
    type, or integers of any width (see :func:`bucket_of`)."""
    key = lk.table.schema.get(lk.lookup.key or "")
    if dtype is None or key is None or dtype == key or (dtype.is_integer() and key.is_integer()):
        return
    raise TransformError(f"lookup {lk.name!r} is joined by hash on {lk.lookup.key} ({key}), but the partial rows' "
                         f"{lk.lookup.by_column} is {dtype}: cast one to the other's type", table=out.name,
                         column=lk.lookup.by_column)


def _bucket_rows(storage: Storage, lk: LookupInput, paths: list[str]) -> pl.DataFrame:
    """A co-partitioned lookup's rows for one final task (the declared columns; an empty frame when it has none)."""
    if not paths:
        return lk.table.empty(lk.lookup.read_columns())
    return read_files(storage, lk.staged, [{"path": p, "partition_values": {}} for p in paths])


def merge_slices(results: list[Report], *, storage: Storage, plan: Aggregate, lookups: dict[str, LookupInput],
                 out: Output, mode: Literal["write", "merge"], routing: salting.Routing,
                 allowed: list[str | None] | None = None, merge_rel: str = "") -> list[Report]:
    """The reduce of the final tasks when keys are salted: their slices (the output rows each task gave for the salted
    keys) through ``merge``, one row per key, checked against the model and written (or staged as MERGE source, with
    a delete for a salted key left with no row); the tasks' other reports pass through."""
    assert plan.merge is not None
    frames = [r.rows for r in results if isinstance(r, Sliced)]
    slices = pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame(schema=out.dtypes)
    passed = [r for r in results if not isinstance(r, Sliced)]
    load = Finished(-1, slices.height, int(slices.estimated_size()))
    result = call(plan.merge, slices, lookups, storage, out)
    df = conform(result, out, plan.merge, allowed=frozenset(allowed) if allowed is not None else None)
    if mode == "write":
        return [*passed, load, *write(storage, out, df)]
    keys = list(out.keys)
    gone = routing.salted(out.dtypes).join(df.select(keys), on=keys, how="anti", nulls_equal=True)
    return [*passed, load, *_merge_source(storage, out, df, gone, merge_rel, "merge-salted")]


def _merge_source(storage: Storage, out: Output, df: pl.DataFrame, gone: pl.DataFrame, merge_rel: str,
                  prefix: str) -> list[Report]:
    """The rows to upsert and the keys to delete, as one staged MERGE source file (bucket -1)."""
    source = pl.concat([df.with_columns(pl.lit(False).alias(DELETE)),
                        gone.with_columns(pl.lit(True).alias(DELETE))], how="diagonal_relaxed")
    if not source.height:
        return []
    schema = pa.schema([*out.schema, pa.field(DELETE, pa.bool_())])
    return [Staged(-1, write_data_file(storage, merge_rel, to_arrow(source, schema), prefix=prefix))]


def through_task(item: dict[str, Any], *, storage: Storage, table: Table, key: str, keys: Any) -> list[Found]:
    """Does this file of the lookup an aggregate goes through hold one of the changed rows' keys? Its partition."""
    wanted: pl.DataFrame = engine.fetch(keys)
    values = wanted.get_column(wanted.columns[0]).drop_nulls()
    if not values.len() or not ranges.may_hold(item, values.cast(table.schema.get(key) or values.dtype, strict=False)):
        return []
    own = table.read(storage, [item], [key]).get_column(key)
    hit = own.is_in(values.cast(own.dtype, strict=False).implode()).any()
    return [Found(item["partition_values"].get(table.partition))] if hit and table.partition else []

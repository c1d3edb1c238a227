"""Hot keys of an aggregation's final step: found from the input's key columns, recorded, placed and salted.

Every partial row of a key goes to one final task, so one key with 30% of the rows makes one task hold 30% of the
work whatever the number of tasks (the "fine on 10 GB, dies on 100 GB" failure). Before the partial step the engine
counts the routing key over the input: its columns only, from at most :data:`SAMPLE_ROWS` rows of files taken
evenly (exact below that). From those counts:

* keys above a share of the rows (``Settings.hot_key_share``, :data:`HOT_SHARE` by default) are *hot*: each run
  records them in ``_meta.hot_keys`` (:class:`HotKey`) and the quality report shows them;
* every key above a small part of one task's rows (:data:`PLACED`) is *placed*: the final tasks are filled heaviest
  first, each key to the least loaded (longest-processing-time packing over the expected hash load of the rest),
  rather than where its hash falls, so a few big keys do not pile up in one task;
* a key bigger than half a task's rows is *salted* when the plan declares ``merge``: its partial rows are cut into
  slices by a hash of the plan's ``salt_by`` columns (by default the whole partial row), about half a task each
  (``ceil(2 x share x tasks)``, at most :data:`MAX_SALTS`; ``Settings.salts`` sets it per table, 0 turns salting
  and placement off), the slices are placed like keys, ``final`` runs on each in its task, and ``merge`` combines the
  slices' output rows of the key into one. Keys that are not that heavy are never salted: it multiplies their work.

The result is the unsalted one as long as ``merge`` combines what ``final`` gives for disjoint parts of a key's rows
(sums of sums, min of mins; a distinct count adds up over slices cut by the counted column, hence ``salt_by``). The
number of final tasks stays what the rows ask for (``Settings.final_task_rows``).
"""

from __future__ import annotations

import datetime as dt
import functools
import heapq
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from lakehouse import table
from lakehouse.table import TableRef

REF = TableRef("_meta", "hot_keys")
SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("table_name", pa.string()),
    ("columns", pa.string()),
    ("key", pa.string()),
    ("rows", pa.int64()),
    ("share", pa.float64()),
    ("final_rows", pa.int64()),
    ("salted", pa.bool_()),
    ("salts", pa.int32()),
    ("note", pa.string()),
    ("recorded_at", pa.timestamp("us", tz="UTC")),
])
HOT_SHARE = 0.02
# Keys above this part of one final task's rows are placed by the packing, the rest by their hash.
PLACED = 0.02
MAX_KNOWN = 4096
MAX_SALTS = 64
# A 2% key is 40,000 rows of such a sample, its share known within a few percent of itself; a key worth placing among
# 64 tasks (PLACED / 64 of the rows) is 600. Reading more only makes the count pass cost more.
SAMPLE_ROWS = 2_000_000
COUNT = "__rows"
SAMPLED = "__sampled"
BUCKETS = "__buckets"
SALTED = "__salted"
HOT = "__hot"
FIRST = "__first"
SLICES = "__slices"
INDEX = "__index"


@dataclass
class HotKey:
    """A key above the hot share of an aggregate's input rows: its values, its rows (from the sample, scaled to the
    input), its share, over how many final tasks it was salted (0: not salted; ``note`` says why) and the partial
    rows of it that reached the final step."""

    table: str
    columns: tuple[str, ...]
    values: tuple[Any, ...]
    rows: int
    share: float
    salts: int = 0
    final_rows: int | None = None
    note: str = ""

    @property
    def salted(self) -> bool:
        return self.salts > 1

    @property
    def key(self) -> str:
        return json.dumps(list(self.values), default=str)

    @property
    def label(self) -> str:
        return ", ".join(f"{c}={v!r}" for c, v in zip(self.columns, self.values, strict=True))


@dataclass(frozen=True)
class Routing:
    """Where the placed keys' partial rows go: per key (the routing columns) its final tasks (``BUCKETS``, one
    unless salted), whether it is salted (``SALTED``: its output rows are merged) and whether it is hot (``HOT``:
    its rows are counted for the record); the columns a salted row's slice is hashed from (empty: all)."""

    keys: pl.DataFrame
    route: tuple[str, ...]
    salt_by: tuple[str, ...] = ()
    output: tuple[str, ...] = ()  # the output's columns holding the key (default: the routing columns' names)

    @property
    def out(self) -> list[str]:
        return list(self.output or self.route)

    def salted(self, dtypes: Mapping[str, Any] | None = None) -> pl.DataFrame:
        """The salted keys, in the output's columns holding them (cast to ``dtypes``)."""
        found = self.keys.filter(pl.col(SALTED)).select(self.route).rename(dict(zip(self.route, self.out,
                                                                                    strict=True)))
        return found.with_columns(pl.col(c).cast(dtypes[c]) for c in self.out) if dtypes else found

    @property
    def any_salted(self) -> bool:
        return bool(self.keys.get_column(SALTED).any())

    @functools.cached_property
    def slots(self) -> tuple[pl.DataFrame, list[int], list[str]]:
        """The keys as :func:`assign_counting` joins them: the routing columns, where their tasks start in the flat
        list of tasks (``FIRST``) and how many (``SLICES``), their index and whether they are hot; that list; and each
        key's :attr:`HotKey.key`, by index."""
        lists = self.keys.get_column(BUCKETS).to_list()
        first = list(itertools.accumulate((len(t) for t in lists[:-1]), initial=0))
        slots = self.keys.select(*self.route, HOT).with_columns(
            pl.Series(FIRST, first, pl.Int64), pl.Series(SLICES, [len(t) for t in lists], pl.UInt64),
            pl.Series(INDEX, range(len(lists)), pl.Int64))
        labels = [json.dumps(list(row), default=str) for row in self.keys.select(self.route).iter_rows()]
        return slots, [b for t in lists for b in t], labels


@dataclass(frozen=True)
class KeyCounts:
    """What one count task found: its heavy keys (the routing columns and ``COUNT``) among the ``rows`` it read."""

    keys: pl.DataFrame
    rows: int


def count_task(item: dict[str, Any], *, storage: Any, table: Any, columns: list[str], floor: float,
               touched: Any = None) -> list[KeyCounts]:
    """The keys (values of ``columns``) above half of ``floor`` of the item's rows, with their rows: a worker reads
    only those columns, and only the ``touched`` keys' rows when a MERGE rebuilds just them. A key above ``floor`` of
    all rows is above it in at least one item, so :func:`known_keys` finds it."""
    from lakehouse import engine

    if not item["files"]:
        return []
    # one read and one group-by for the task's files (per file, the group-bys cost three times the reading)
    df = table.read(storage, item["files"], columns)
    if touched is not None:
        keys: pl.DataFrame = engine.fetch(touched)
        df = df.join(keys, on=list(keys.columns), how="semi", nulls_equal=True)
    counts = df.group_by(columns).agg(pl.len().cast(pl.Int64).alias(COUNT))
    return [KeyCounts(counts.filter(pl.col(COUNT) > floor / 2 * df.height), df.height)]


def known_keys(counts: list[KeyCounts], *, floor: float, limit: int = MAX_KNOWN) -> pl.DataFrame:
    """The keys above ``floor`` of every counted row (from :func:`count_task`'s reports, a few hundred keys each),
    heaviest first (at most ``limit``), with the number of rows counted (``SAMPLED``). A key's rows are summed over
    the items that returned it: a lower bound."""
    rows = sum(c.rows for c in counts)
    frames = [c.keys for c in counts if c.keys.height]
    if not frames:
        return pl.DataFrame()
    total = pl.concat(frames).group_by(pl.exclude(COUNT)).agg(pl.col(COUNT).sum())
    known = total.filter(pl.col(COUNT) > floor * rows).sort(COUNT, descending=True).head(limit)
    return known.with_columns(pl.lit(rows, pl.Int64).alias(SAMPLED))


def sample(files: list[Any], limit: int = SAMPLE_ROWS) -> list[Any]:
    """Files taken evenly (every k-th) so that about ``limit`` rows are read; all of them when they hold fewer."""
    total = sum(f.rows for f in files)
    if total <= limit or not files:
        return list(files)
    return list(files[::max(1, round(total / limit))])


def floor_share(hot_share: float, buckets: int) -> float:
    """The smallest share of the rows :func:`known_keys` returns: hot keys, and keys worth placing."""
    return min(hot_share, PLACED / max(1, buckets))


def route_plan(found: pl.DataFrame, route: list[str], *, name: str, buckets: int, total_rows: int, hot_share: float,
               forced: int | None, can_salt: bool, why_not: str = "", salt_by: tuple[str, ...] = (),
               output: tuple[str, ...] = ()) -> tuple[list[HotKey], Routing | None]:
    """The hot keys of a build and the routing of the known keys (from :func:`known_keys`' frame; shares scaled from
    the sample to ``total_rows``): placed by longest-processing-time packing, salted when bigger than half a task."""
    if not found.height:
        return [], None
    sampled = max(1, int(found.get_column(SAMPLED)[0]))
    shares = [row[COUNT] / sampled for row in found.iter_rows(named=True)]
    values = [tuple(row[c] for c in route) for row in found.iter_rows(named=True)]
    hot = [HotKey(table=name, columns=tuple(route), values=v, rows=round(s * total_rows), share=s)
           for v, s in zip(values, shares, strict=True) if s > hot_share]
    if buckets <= 1 or forced == 0:
        note = ("not salted: salting is off for this table (Settings.salts = 0)" if forced == 0 else
                "not salted: the final step is one task, which holds every key anyway")
        for h in hot:
            h.note = note
        return hot, None
    slices = []
    for share in shares:
        wanted = forced if forced is not None and share > hot_share else math.ceil(2 * share * buckets - 1e-9)
        slices.append(min(MAX_SALTS, max(1, wanted)) if can_salt else 1)
    # Longest-processing-time packing: slices heaviest first, each to the least loaded task, over the load the keys
    # left to their hash are expected to bring (spread evenly).
    rest = max(0.0, 1.0 - sum(shares)) / buckets
    heap = [(rest, b) for b in range(buckets)]
    heapq.heapify(heap)
    placed: list[list[int]] = [[] for _ in shares]
    order = sorted(((s / n, i) for i, (s, n) in enumerate(zip(shares, slices, strict=True)) for _ in range(n)),
                   reverse=True)
    for size, i in order:
        load, b = heapq.heappop(heap)
        placed[i].append(b)
        heapq.heappush(heap, (load + size, b))
    by_values = {v: i for i, v in enumerate(values)}
    for h in hot:
        n = slices[by_values[h.values]]
        if n > 1:
            h.salts = n
            h.note = f"salted over {n} tasks"
        elif not can_salt:
            h.note = f"not salted: {why_not}" if why_not else "not salted"
        else:
            h.note = "not salted: it fits in one task (placed in the least loaded)"
    hot_values = {h.values for h in hot}
    keys = pl.DataFrame({c: [v[j] for v in values] for j, c in enumerate(route)},
                        schema={c: found.schema[c] for c in route}).with_columns(
        pl.Series(BUCKETS, placed, pl.List(pl.Int64)), pl.Series(SALTED, [n > 1 for n in slices], pl.Boolean),
        pl.Series(HOT, [v in hot_values for v in values], pl.Boolean))
    return hot, Routing(keys=keys, route=tuple(route), salt_by=salt_by, output=output)


def assign(df: pl.DataFrame, routing: Routing | None, plain: pl.Expr, column: str) -> pl.DataFrame:
    """``df`` with its final task in ``column``: for a placed key's rows the task it was given (for a salted key's,
    one of its slices' by a hash of the ``salt_by`` columns), for the others ``plain`` (a hash of the routing
    columns)."""
    return assign_counting(df, routing, plain, column)[0]


def assign_counting(df: pl.DataFrame, routing: Routing | None, plain: pl.Expr,
                    column: str) -> tuple[pl.DataFrame, dict[str, int]]:
    """:func:`assign`, and the rows of each hot key in ``df`` (by :attr:`HotKey.key`, for the record) counted in the
    same pass. A partial task pays this on every file, so it is one join with the keys' slots (:attr:`Routing.slots`)
    and no list column: a key's task is ``tasks[first + salt % slices]``, or ``plain`` for a key not placed."""
    if routing is None:
        return df.with_columns(plain.alias(column)), {}
    route = list(routing.route)
    slots, tasks, labels = routing.slots
    by = [c for c in routing.salt_by if c in df.columns] or list(df.columns)
    salt = pl.col(by[0]).hash(seed=7) if len(by) == 1 else pl.struct([pl.col(c) for c in by]).hash(seed=7)
    slot = pl.col(FIRST) + (salt % pl.col(SLICES)).cast(pl.Int64)
    joined = df.join(slots.with_columns(pl.col(c).cast(df.schema[c], strict=False) for c in route),
                     on=route, how="left", nulls_equal=True, maintain_order="left")
    joined = joined.with_columns(pl.coalesce(slot.replace_strict(list(range(len(tasks))), tasks, default=None,
                                                                 return_dtype=pl.Int64), plain).alias(column))
    hot = joined.get_column(INDEX).filter(joined.get_column(HOT).fill_null(False)).value_counts()
    counted = {labels[i]: int(n) for i, n in hot.iter_rows()}
    return joined.drop(FIRST, SLICES, INDEX, HOT), counted


def _keys_for(df: pl.DataFrame, routing: Routing, *columns: str) -> pl.DataFrame:
    """The routing's keys with ``columns``, their routing columns cast to ``df``'s types (to be joined with it)."""
    route = list(routing.route)
    return routing.keys.select(*route, *columns).with_columns(
        pl.col(c).cast(df.schema[c], strict=False) for c in route if c in df.schema)


def replicate(df: pl.DataFrame, routing: Routing | None, plain: pl.Expr, column: str) -> pl.DataFrame:
    """``df`` (a lookup's rows, by the routing columns) with the final task of each row in ``column``, like
    :func:`assign`, except that a salted key's rows go to every task holding one of its slices (a row each)."""
    if routing is None:
        return df.with_columns(plain.alias(column))
    joined = df.with_columns(plain.alias(column)).join(_keys_for(df, routing, BUCKETS), on=list(routing.route),
                                                       how="left", nulls_equal=True, maintain_order="left")
    joined = joined.with_columns(pl.when(pl.col(BUCKETS).is_not_null()).then(pl.col(BUCKETS).list.unique())
                                 .otherwise(pl.concat_list(pl.col(column))).alias(BUCKETS))
    return joined.drop(column).explode(BUCKETS).rename({BUCKETS: column}).with_columns(pl.col(column).cast(pl.Int64))


def record(storage: Any, run_id: str, hot: list[HotKey]) -> None:
    """Append a run's hot keys to ``_meta.hot_keys`` (one commit)."""
    if not hot:
        return
    now = dt.datetime.now(dt.UTC)
    rows = [{"run_id": run_id, "table_name": h.table, "columns": ",".join(h.columns), "key": h.key, "rows": h.rows,
             "share": h.share, "final_rows": h.final_rows, "salted": h.salted, "salts": h.salts, "note": h.note,
             "recorded_at": now} for h in hot]
    table.append_rows(storage, REF, pa.Table.from_pylist(rows, schema=SCHEMA))

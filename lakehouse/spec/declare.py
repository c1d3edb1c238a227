"""Pipeline declarations: sources, silver tables, change-data-capture streams and gold tables, as frozen values.

A pipeline is checked when it loads (:meth:`Pipeline.validate`): every error names the declaration and the field
(an unknown input, a cycle, a partition column the output lacks, a transform that cannot be placed as declared).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl

from lakehouse.errors import ConfigError
from lakehouse.spec.partition import Partitioning
from lakehouse.spec.plans import Aggregate, Lookup, PerPartition, Plan, parameters

Format = Literal["csv", "ndjson", "parquet"]
WriteMode = Literal["overwrite", "merge"]


@dataclass(frozen=True)
class Source:
    """Raw files landed under ``raw/<path>/`` (default: the source's name), ingested into ``bronze.<name>``.

    ``format``: every file's format (None: each file's from its extension: ``.csv``, ``.json``/``.ndjson``/``.jsonl``,
    ``.parquet``). ``compression``: ``gzip`` for every file (None: by the extension, ``.csv.gz``). CSV reader options:
    ``delimiter``, ``quote`` and ``nulls``, the markers that mean no value (``NULL``, ``\\N``; otherwise every value is
    kept as landed, blanks included). ``changes``: Debezium change events, each kept whole in bronze (column
    ``event``, its JSON text), where a ``null`` line (the tombstone after a delete) is no record (set for a source
    a :class:`Cdc` reads).
    """

    name: str
    path: str | None = None
    format: Format | None = None
    compression: Literal["gzip"] | None = None
    delimiter: str = ","
    quote: str = '"'
    nulls: Sequence[str] = ()
    changes: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "nulls", _names(self.nulls))
        where = f"Source({self.name!r})"
        if self.format not in (None, "csv", "ndjson", "parquet"):
            raise ConfigError(f"{where}: format must be csv, ndjson or parquet, not {self.format!r}")
        if self.compression not in (None, "gzip"):
            raise ConfigError(f"{where}: compression must be gzip (None: by the extension), not {self.compression!r}")
        for name, char in (("delimiter", self.delimiter), ("quote", self.quote)):
            if len(char) != 1 or char in "\r\n":
                raise ConfigError(f"{where}: {name} must be one character, not {char!r}")
        if self.delimiter == self.quote:
            raise ConfigError(f"{where}: delimiter and quote must differ")

    @property
    def raw_dir(self) -> str:
        return f"raw/{(self.path or self.name).strip('/')}"


@dataclass(frozen=True)
class Silver:
    """A typed, validated, deduplicated table built from bronze source ``source`` (default: the table's name).

    ``model`` is its Pandera model (types and row rules, and in ``Config.metadata`` its quality gates); ``keys``
    identify a row (the most recently landed row of a key wins); ``partition`` its partitioning (None: one
    unpartitioned table). ``write_mode``: ``overwrite`` rewrites the partitions a batch touches (keys may move between
    them); ``merge`` merges the batch on the keys, rewriting only files whose rows change (keys stay in their
    partition), the latest row of a key decided by ``order_by`` and then the landing order. ``lookback``: a landed
    row for a partition more than this many periods before the table's newest is held in quarantine until a backfill
    (None: every late row is taken in).
    """

    name: str
    model: Any
    keys: Sequence[str]
    source: str = ""
    partition: Partitioning | None = None
    write_mode: WriteMode = "overwrite"
    order_by: Sequence[str] = ()
    lookback: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", _names(self.keys))
        object.__setattr__(self, "order_by", _names(self.order_by))
        if not self.source:
            object.__setattr__(self, "source", self.name)


DecimalHandling = Literal["string", "precise", "double"]
TruncateAction = Literal["apply", "fail", "quarantine"]
UNAVAILABLE_VALUE = "__debezium_unavailable_value"


@dataclass(frozen=True)
class Cdc:
    """Change events of silver table ``table`` landed under source ``source`` (Debezium events, one per line),
    applied after the table's snapshot: the current state in ``silver.<table>`` (SCD type 1) and every version in
    ``silver.<history>`` (SCD type 2; default ``<table>_history``). The keys are the table's.

    Every form a Debezium feed takes is read, event by event: the envelope (``op``, ``before``, ``after``,
    ``source``), Kafka Connect's JsonConverter wrapping (``{"schema", "payload"}``, values decoded by the schema) and
    the flattened rows of the ExtractNewRecordState transform (``__op``, ``__lsn``, ``__source_ts_ms``,
    ``__deleted``). What an event does not carry is declared here:

    - ``decimal_handling``: what a JSON string in a numeric column of an event *without a schema* is: ``string``
      (a decimal literal, ``"12.50"``: Debezium's ``decimal.handling.mode=string``, and what CSV-flattened feeds
      hold) or ``precise`` (base64 of the unscaled integer, Debezium's default mode, at the scale in ``scales`` or
      the model's ``Decimal`` scale). JSON numbers (``double`` mode) are read as numbers in every mode.
    - ``scales``: the scale of a precise decimal per column, for events without a schema whose model column is not
      a ``Decimal`` of that scale.
    - ``truncate``: what an ``op: "t"`` event does: ``apply`` (every current row is closed at its LSN, as a delete),
      ``fail`` (the run fails naming the event) or ``quarantine`` (held in quarantine, nothing applied).
    - ``unavailable_value``: the connector's ``unavailable.value.placeholder``: a column holding it (an unchanged
      TOASTed value) keeps the value it had before the event and the placeholder is never stored.
    """

    table: str
    source: str
    history: str = ""
    decimal_handling: DecimalHandling = "string"
    scales: Mapping[str, int] = field(default_factory=dict)
    truncate: TruncateAction = "apply"
    unavailable_value: str = UNAVAILABLE_VALUE

    def __post_init__(self) -> None:
        if not self.history:
            object.__setattr__(self, "history", f"{self.table}_history")
        where = f"Cdc({self.table!r})"
        if self.decimal_handling not in ("string", "precise", "double"):
            raise ConfigError(f"{where}: decimal_handling must be string, precise or double, not "
                              f"{self.decimal_handling!r}")
        if self.truncate not in ("apply", "fail", "quarantine"):
            raise ConfigError(f"{where}: truncate must be apply, fail or quarantine, not {self.truncate!r}")
        scales = dict(self.scales)
        for column, scale in scales.items():
            if not isinstance(scale, int) or isinstance(scale, bool) or scale < 0:
                raise ConfigError(f"{where}: scales[{column!r}] must be a whole number >= 0, not {scale!r}")
        object.__setattr__(self, "scales", tuple(sorted(scales.items())))  # hashable, like the rest
        if not self.unavailable_value:
            raise ConfigError(f"{where}: unavailable_value must not be empty")

    @property
    def name(self) -> str:
        return self.table

    def scale(self, column: str) -> int | None:
        return dict(self.scales).get(column)  # type: ignore[arg-type]


@dataclass(frozen=True, eq=False)
class Gold:
    """A curated table: ``model`` (a Pandera model) is its schema, ``partition`` its partition column (a column of
    the model; None: unpartitioned), ``keys`` the columns that identify a row of an unpartitioned table (default: the
    aggregate's ``by``), and ``plan`` how it is computed from named silver or gold inputs (see
    :mod:`lakehouse.spec.plans`)."""

    name: str
    model: Any
    plan: Plan
    partition: str | None = None
    keys: Sequence[str] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", _names(self.keys) or (
            self.plan.by if isinstance(self.plan, Aggregate) and not self.partition else ()))

    @property
    def lookups(self) -> dict[str, Lookup]:
        return dict(self.plan.lookups)

    @property
    def inputs(self) -> tuple[str, ...]:
        """Every table the plan reads: its input, then its lookups."""
        return tuple(dict.fromkeys([self.plan.input, *(lk.input for lk in self.plan.lookups.values())]))


Stage = tuple[str, str]  # (layer, name): ("bronze", source), ("silver", table), ("cdc", history), ("gold", table)


@dataclass(frozen=True, eq=False)
class Pipeline:
    """A named set of declarations. ``demo``: ``module:function`` that lands demo data (``lakehouse demo-data``)."""

    name: str
    sources: Sequence[Source]
    silver: Sequence[Silver]
    gold: Sequence[Gold] = ()
    cdc: Sequence[Cdc] = ()
    demo: str | None = None

    def __post_init__(self) -> None:
        sources = tuple(self.sources)
        changes = {c.source for c in self.cdc}
        sources = tuple(dataclasses.replace(s, changes=True) if s.name in changes and not s.changes else s
                        for s in sources)
        object.__setattr__(self, "sources", sources)
        for name in ("silver", "gold", "cdc"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    # --- lookups by name ----------------------------------------------------------------------------------------

    def source(self, name: str) -> Source:
        return _one(self.sources, name, "source", self.name)

    def silver_spec(self, name: str) -> Silver:
        return _one(self.silver, name, "silver table", self.name)

    def gold_spec(self, name: str) -> Gold:
        return _one(self.gold, name, "gold table", self.name)

    def cdc_spec(self, history: str) -> Cdc:
        found = [c for c in self.cdc if c.history == history]
        if not found:
            raise ConfigError(f"pipeline {self.name}: no change stream writes silver.{history}")
        return found[0]

    @property
    def source_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sources)

    def table_of(self, name: str) -> tuple[str, str]:
        """The (layer, table) a plan's input ``name`` refers to: a silver table (or a CDC history), or a gold table;
        ``silver.x`` and ``gold.x`` say which."""
        layer, dot, bare = name.partition(".")
        silver = {s.name for s in self.silver} | {c.history for c in self.cdc}
        gold = {g.name for g in self.gold}
        if dot:
            known = silver if layer == "silver" else gold if layer == "gold" else set()
            if bare in known:
                return layer, bare
        elif name in silver:
            return "silver", name
        elif name in gold:
            return "gold", name
        raise ConfigError(f"pipeline {self.name}: {name!r} is not a table of the pipeline (silver: "
                          f"{', '.join(sorted(silver)) or 'none'}; gold: {', '.join(sorted(gold)) or 'none'})")

    def partition_of(self, name: str) -> tuple[str | None, Partitioning | None]:
        """The partition column of input ``name``, and its time partitioning when it is a silver table partitioned
        by a time grain."""
        layer, table = self.table_of(name)
        if layer == "gold":
            return self.gold_spec(table).partition, None
        spec = next((s for s in self.silver if s.name == table), None)
        if spec is None or spec.partition is None:
            return None, None
        return spec.partition.column, spec.partition if spec.partition.time else None

    # --- checks -------------------------------------------------------------------------------------------------

    def validate(self) -> Pipeline:
        """Check every declaration; raise :class:`ConfigError` naming the declaration and the field."""
        _unique(self.name, "source", [s.name for s in self.sources])
        _unique(self.name, "table", [s.name for s in self.silver] + [c.history for c in self.cdc] +
                [g.name for g in self.gold])
        sources = set(self.source_names)
        for s in self.silver:
            _check_silver(self, s, sources)
        for c in self.cdc:
            where = f"pipeline {self.name}: Cdc({c.table!r})"
            if c.table not in {s.name for s in self.silver}:
                raise ConfigError(f"{where}: table names no silver table")
            if c.source not in sources:
                raise ConfigError(f"{where}: source {c.source!r} is not a declared source")
        for g in self.gold:
            _check_gold(self, g)
        self.stages()  # raises on a cycle
        return self

    def stages(self) -> list[Stage]:
        """Every stage of a run in an order that respects the dependencies (a table after the tables it reads; a
        silver table after the tables its ``references`` gates check), declaration order otherwise."""
        deps = self.dependencies()
        rank = {"bronze": 0, "silver": 1, "cdc": 2, "gold": 3}
        order = {stage: i for i, stage in enumerate(deps)}
        done: list[Stage] = []
        left = dict(deps)
        while left:
            ready = [s for s, d in left.items() if not (d & left.keys())]
            if not ready:
                cycle = " -> ".join(f"{layer}.{name}" for layer, name in sorted(left, key=order.__getitem__))
                raise ConfigError(f"pipeline {self.name}: the tables depend on each other in a cycle ({cycle})")
            first = min(ready, key=lambda s: (rank[s[0]], order[s]))
            done.append(first)
            del left[first]
        return done

    def dependencies(self) -> dict[Stage, set[Stage]]:
        """Each stage and the stages that must end before it starts (in declaration order): a silver table's source,
        the silver tables its ``references`` gates check, a change history's table and source, and the writers of
        each of a gold table's inputs."""
        deps: dict[Stage, set[Stage]] = {("bronze", s.name): set() for s in self.sources}
        writers: dict[str, set[Stage]] = {}  # silver/gold table -> the stages that write it
        for s in self.silver:
            deps[("silver", s.name)] = {("bronze", s.source)}
            writers.setdefault(s.name, set()).add(("silver", s.name))
        for c in self.cdc:
            deps[("cdc", c.history)] = {("silver", c.table), ("bronze", c.source)}
            writers.setdefault(c.table, set()).add(("cdc", c.history))
            writers.setdefault(c.history, set()).add(("cdc", c.history))
        for s in self.silver:
            for parent in _referenced(s.model):
                if parent in {t.name for t in self.silver} and parent != s.name:
                    deps[("silver", s.name)].add(("silver", parent))
        for g in self.gold:
            deps[("gold", g.name)] = set()
            writers.setdefault(g.name, set()).add(("gold", g.name))
        for g in self.gold:
            for name in g.inputs:
                _, table = self.table_of(name)
                deps[("gold", g.name)] |= writers.get(table, set()) - {("gold", g.name)}
                if table == g.name:
                    raise ConfigError(f"pipeline {self.name}: gold table {g.name!r} reads itself")
        return deps


# --- helpers ------------------------------------------------------------------------------------------------------


def _names(value: Iterable[str] | str) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _one(items: Iterable[Any], name: str, what: str, pipeline: str) -> Any:
    items = list(items)
    for item in items:
        if item.name == name:
            return item
    known = ", ".join(i.name for i in items) or "none"
    raise ConfigError(f"pipeline {pipeline}: no {what} {name!r} (known: {known})")


def _unique(pipeline: str, what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ConfigError(f"pipeline {pipeline}: {what} {n!r} is declared twice")
        seen.add(n)


def model_columns(model: Any, where: str) -> dict[str, Any]:
    """Column -> polars dtype of a Pandera model, or a ConfigError naming ``where`` when it is not one."""
    from lakehouse.quality.validation import model_dtypes  # pandera's home

    try:
        return model_dtypes(model)
    except Exception as e:  # not a pandera DataFrameModel, or one that does not build
        raise ConfigError(f"{where}: model must be a Pandera DataFrameModel ({type(e).__name__}: {e})") from e


def _referenced(model: Any) -> list[str]:
    from lakehouse.quality.validation import model_metadata

    refs = (model_metadata(model).get("gates") or {}).get("references") or {}
    return [str(target).split(".", 1)[0] for target in refs.values()]


def _check_silver(p: Pipeline, s: Silver, sources: set[str]) -> None:
    where = f"pipeline {p.name}: Silver({s.name!r})"
    if s.source not in sources:
        known = ", ".join(sorted(sources))
        raise ConfigError(f"{where}: source {s.source!r} is not a declared source (known: {known})")
    columns = model_columns(s.model, where)
    for fld, names in (("keys", s.keys), ("order_by", s.order_by)):
        for c in names:
            if c not in columns:
                raise ConfigError(f"{where}: {fld} names {c!r}, which is not a column of {s.model.__name__}")
    if not s.keys:
        raise ConfigError(f"{where}: keys must name at least one column")
    if s.write_mode not in ("overwrite", "merge"):
        raise ConfigError(f"{where}: write_mode must be overwrite or merge, not {s.write_mode!r}")
    if s.lookback is not None and (s.lookback < 0 or s.partition is None or not s.partition.time):
        raise ConfigError(f"{where}: lookback needs a time partitioning and a count of periods >= 0")
    if s.partition is not None:
        part = s.partition
        if part.source_column not in columns:
            raise ConfigError(f"{where}: partition is derived from {part.source_column!r}, which is not a column of "
                              f"{s.model.__name__}")
        if part.time and columns[part.source_column] not in (pl.Date, pl.Datetime):
            raise ConfigError(f"{where}: partition column {part.source_column!r} must be a date or timestamp, not "
                              f"{columns[part.source_column]} (identity({part.source_column!r}) partitions by its "
                              "value)")
        if not part.time and columns[part.source_column] in (pl.Float32, pl.Float64):
            raise ConfigError(f"{where}: partition by the value of {part.source_column!r}, a float, would make a "
                              "partition of each value; partition by a column of few values")
        if part.time and part.column in columns:
            raise ConfigError(f"{where}: partition column {part.column!r} is already a column of the model; name it "
                              "with as_=")


def _check_gold(p: Pipeline, g: Gold) -> None:
    where = f"pipeline {p.name}: Gold({g.name!r})"
    columns = model_columns(g.model, where)
    if g.partition is not None and g.partition not in columns:
        raise ConfigError(f"{where}: partition column {g.partition!r} is not a column of {g.model.__name__}")
    for k in g.keys:
        if k not in columns:
            raise ConfigError(f"{where}: keys names {k!r}, which is not a column of {g.model.__name__}")
    plan = g.plan
    if not isinstance(plan, (PerPartition, Aggregate)):
        raise ConfigError(f"{where}: plan must be per_partition(...) or aggregate(...), not {type(plan).__name__}")
    for name in g.inputs:
        try:
            p.table_of(name)
        except ConfigError as e:
            raise ConfigError(f"{where}: input {name!r}: {e.message}") from None
    used: set[str] = set()
    for role, fn in plan.functions.items():
        _, wanted = parameters(fn)
        for param in wanted:
            if param not in plan.lookups:
                raise ConfigError(f"{where}: {role} function {fn.__qualname__} takes {param!r}, which names no lookup "
                                  f"of the plan (declared: {', '.join(plan.lookups) or 'none'})")
        used |= set(wanted)
    for name in plan.lookups:
        if name not in used:
            raise ConfigError(f"{where}: lookup {name!r} is used by no function of the plan")
    input_partition, time = p.partition_of(plan.input)
    if isinstance(plan, PerPartition):
        if g.partition is None:
            raise ConfigError(f"{where}: per_partition needs a partitioned output (partition=...)")
        if input_partition is None:
            raise ConfigError(f"{where}: per_partition over {plan.input!r}, which is not partitioned: there is no "
                              "partition to align with (use aggregate)")
        if plan.window > 1 and time is None:
            raise ConfigError(f"{where}: window={plan.window} needs an input partitioned by a time grain")
    else:
        if plan.through is not None:
            through_partition, _ = p.partition_of(plan.lookups[plan.through].input)
            if g.partition is None or through_partition is None:
                raise ConfigError(f"{where}: through={plan.through!r} needs a partitioned output and a partitioned "
                                  "lookup (the output's partitions are the lookup's)")
        if g.partition is None and not plan.by:
            raise ConfigError(f"{where}: an unpartitioned aggregate needs by=(...): the keys its final step groups by")

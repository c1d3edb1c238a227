"""How a gold table is computed: its plan, declared in a form the engine can place without a hash shuffle.

* :func:`per_partition`: the transform sees one partition of an input (or a window of partitions ending at it) and
  returns that partition of the output; one task per partition, aligned with the input's partitioning.
* :func:`aggregate`: a combiner-style aggregation. ``partial`` runs on each file of the input (a block) on a worker;
  its rows are routed by the ``by`` columns (or the output's partition column) to ``final``, which sees every
  partial row of the keys it is given and returns the output rows for them.
* :func:`lookup`: a further input joined inside those functions. A small one is broadcast through the object store
  once; a large one (over the broadcast threshold, measured from the log) with a ``key`` is read in each task
  filtered to the keys the task needs (``by``: the column of the task's rows the key is looked up from).

Each function is plain Polars: its first parameter is the task's frame, the others are lookups by the names they
are declared under (the engine passes each function only the lookups its signature asks for).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from lakehouse.errors import ConfigError

Transform = Callable[..., pl.DataFrame]


@dataclass(frozen=True, eq=False)
class Lookup:
    """A further input of a transform: the table ``input`` (a silver or gold table of the pipeline).

    ``key`` and ``by``: the lookup's rows are found by ``key`` from the ``by`` column of the task's frame (default:
    the same name); with them a lookup too large to broadcast is read filtered to the keys a task needs. ``columns``
    and ``where`` narrow what is read (``where`` is applied to each file as it is read, so memory stays bounded).
    ``broadcast_max_rows`` overrides the pipeline's broadcast threshold for this input.
    """

    input: str
    key: str | None = None
    by: str | None = None
    columns: tuple[str, ...] | None = None
    where: pl.Expr | None = None
    broadcast_max_rows: int | None = None

    @property
    def by_column(self) -> str | None:
        return self.by or self.key

    def read_columns(self) -> list[str] | None:
        """Columns to read: the declared ones, the key and those ``where`` uses (None: every column)."""
        if self.columns is None:
            return None
        used = self.where.meta.root_names() if self.where is not None else []
        return list(dict.fromkeys([*self.columns, *([self.key] if self.key else []), *used]))


def lookup(
    input: str,
    *,
    key: str | None = None,
    by: str | None = None,
    columns: tuple[str, ...] | list[str] | None = None,
    where: pl.Expr | None = None,
    broadcast_max_rows: int | None = None,
) -> Lookup:
    """A lookup input (see :class:`Lookup`)."""
    if by is not None and key is None:
        raise ConfigError(f"lookup({input!r}): by={by!r} needs the key it is looked up by (key=...)")
    return Lookup(input=input, key=key, by=by, columns=tuple(columns) if columns is not None else None, where=where,
                  broadcast_max_rows=broadcast_max_rows)


@dataclass(frozen=True, eq=False)
class PerPartition:
    """One task per output partition: ``transform(rows of input's partition, **lookups)``. With ``window`` > 1 the
    task sees the ``window`` partitions ending at its own (a rolling window), and a changed input partition rebuilds
    the ``window`` partitions it feeds."""

    input: str
    transform: Transform
    lookups: Mapping[str, Lookup] = field(default_factory=dict)
    columns: tuple[str, ...] | None = None
    window: int = 1

    @property
    def functions(self) -> dict[str, Transform]:
        return {"transform": self.transform}


def per_partition(
    input: str,
    transform: Transform,
    *,
    columns: tuple[str, ...] | list[str] | None = None,
    window: int = 1,
    **lookups: Lookup,
) -> PerPartition:
    """A partition-aligned transform (see :class:`PerPartition`); ``lookups`` by the names the transform uses."""
    if window < 1:
        raise ConfigError(f"per_partition({input!r}): window must be at least 1, not {window}")
    return PerPartition(input=input, transform=transform, lookups=_lookups(input, lookups),
                        columns=tuple(columns) if columns is not None else None, window=window)


@dataclass(frozen=True, eq=False)
class Aggregate:
    """Partial aggregates per file of ``input``, then ``final`` per group of keys.

    Rows reach ``final`` grouped by the output's partition column when the output is partitioned, else by ``by``;
    every partial row of a key goes to the same ``final`` call. ``through``: the name of a lookup whose table is
    partitioned like the output; the input's rows reach their output partition through it (lines by ship month
    feed revenue by order month through the order key), so a changed input partition rebuilds only the output
    partitions its rows map to, and the lookup is given to each task restricted to the partitions being built.

    ``merge``: combines output rows of ``final`` for the same key computed from disjoint parts of its partial rows
    into the key's one row (sums of sums, min of mins, ...). With it a hot key is salted: its partial rows are cut
    into slices (by a hash of ``salt_by``, by default of the whole row), each finished by ``final`` in its own task,
    and ``merge`` gives the key's row (:mod:`lakehouse.gold.salting`). A ``final`` that counts distinct values of a
    column needs ``salt_by`` that column: the counts of slices cut by it add up.
    """

    input: str
    partial: Transform
    final: Transform
    by: tuple[str, ...] = ()
    lookups: Mapping[str, Lookup] = field(default_factory=dict)
    columns: tuple[str, ...] | None = None
    through: str | None = None
    merge: Transform | None = None
    salt_by: tuple[str, ...] = ()

    @property
    def functions(self) -> dict[str, Transform]:
        found = {"partial": self.partial, "final": self.final}
        return {**found, "merge": self.merge} if self.merge is not None else found


def aggregate(
    input: str,
    *,
    partial: Transform,
    final: Transform,
    by: tuple[str, ...] | list[str] | str = (),
    columns: tuple[str, ...] | list[str] | None = None,
    through: str | None = None,
    merge: Transform | None = None,
    salt_by: tuple[str, ...] | list[str] | str = (),
    **lookups: Lookup,
) -> Aggregate:
    """A combiner-style aggregation (see :class:`Aggregate`); ``lookups`` by the names the functions use."""
    keys = (by,) if isinstance(by, str) else tuple(by)
    found = _lookups(input, lookups)
    if through is not None:
        if through not in found:
            raise ConfigError(f"aggregate({input!r}): through={through!r} names no lookup (declared: "
                              f"{', '.join(found) or 'none'})")
        if found[through].key is None:
            raise ConfigError(f"aggregate({input!r}): the lookup {through!r} it goes through needs key= and by=")
    salt = (salt_by,) if isinstance(salt_by, str) else tuple(salt_by)
    if salt and merge is None:
        raise ConfigError(f"aggregate({input!r}): salt_by={salt!r} needs merge= (what combines a hot key's slices)")
    return Aggregate(input=input, partial=partial, final=final, by=keys, lookups=found,
                     columns=tuple(columns) if columns is not None else None, through=through, merge=merge,
                     salt_by=salt)


Plan = PerPartition | Aggregate


def _lookups(input: str, lookups: Mapping[str, Any]) -> dict[str, Lookup]:
    for name, value in lookups.items():
        if not isinstance(value, Lookup):
            raise ConfigError(f"plan over {input!r}: {name}= must be a lookup(...), not {type(value).__name__}")
    return dict(lookups)


def parameters(fn: Transform) -> tuple[str, list[str]]:
    """The name of a transform's first parameter (its frame) and the names of the rest (the lookups it uses)."""
    params = [p for p in inspect.signature(fn).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not params or params[0].kind == params[0].KEYWORD_ONLY:
        raise ConfigError(f"transform {fn.__qualname__} takes no frame (its first parameter is the rows it is given)")
    return params[0].name, [p.name for p in params[1:]]

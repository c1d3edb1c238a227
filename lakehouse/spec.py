"""Pipeline declarations: sources, silver tables and gold tables, as plain frozen values."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from lakehouse.context import RunContext, StageResult


@dataclass(frozen=True)
class MonthPartition:
    """Partition a table by the first day of the month of ``source_column``, stored as ``column``."""

    column: str
    source_column: str


@dataclass(frozen=True)
class SilverSpec:
    """A typed, validated, deduplicated table built from one bronze source.

    ``model`` is the Pandera model (types and row rules); ``keys`` identify a row (the most recently landed row of a
    key wins); ``partition`` is the month partitioning of fact tables (None: one unpartitioned table).
    """

    name: str
    source: str
    model: Any
    keys: tuple[str, ...]
    partition: MonthPartition | None = None
    # "overwrite": a batch rewrites the partitions it touches (keys may move between them). "merge": a batch is merged
    # on the keys, rewriting only the files whose rows change (keys must stay in their partition); ``order_by``
    # columns decide which row of a key is the latest (then the landing order), in the batch and against the table.
    write_mode: Literal["overwrite", "merge"] = "overwrite"
    order_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class CdcSpec:
    """Change events (Debezium envelopes landed under ``raw/<source>/``) applied to silver table ``name`` (current
    state, SCD type 1) through ``history`` (one row per version, SCD type 2); see ``lakehouse.cdc``."""

    name: str
    source: str
    history: str


@dataclass(frozen=True)
class GoldSpec:
    """A curated table built by ``build(ctx, spec)`` from the silver tables named in ``inputs``."""

    name: str
    inputs: tuple[str, ...]
    build: Callable[[RunContext, GoldSpec], StageResult]
    partition_column: str | None = None


@dataclass(frozen=True)
class Pipeline:
    name: str
    sources: tuple[str, ...]
    silver: tuple[SilverSpec, ...]
    gold: tuple[GoldSpec, ...]
    cdc: tuple[CdcSpec, ...] = ()

    def silver_spec(self, name: str) -> SilverSpec:
        return next(s for s in self.silver if s.name == name)

    def cdc_spec(self, history: str) -> CdcSpec:
        return next(c for c in self.cdc if c.history == history)

    def gold_spec(self, name: str) -> GoldSpec:
        return next(g for g in self.gold if g.name == name)

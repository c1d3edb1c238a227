"""What the silver stage's worker tasks report back to the driver: small typed records (data files written, counts,
findings); the rows themselves stay on the workers and in the files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from lakehouse.storage.files import DataFile


@dataclass(frozen=True)
class Read:
    """Rows read from one bronze file (or, for a replay, the quarantined rows of one quarantine file retried), and
    how many valid ones were dropped there as older rows of a key the file holds again (``duplicates``)."""

    rows: int
    duplicates: int = 0


@dataclass(frozen=True)
class Finding:
    """Rows of one file a row rule warned about (``warn``) or rejected (``reject``), per check and column, with the
    first one's value as landed and where it was."""

    kind: Literal["warn", "reject"]
    check: str
    column: str
    n: int
    value: Any
    file: str | None
    line: int | None


@dataclass(frozen=True)
class Quarantined:
    """A quarantine file of one bronze file's rejected rows; ``late`` of them are held by the lookback on purpose
    (counted, but not against the quality gate)."""

    file: DataFile
    late: int = 0


@dataclass(frozen=True)
class Staged:
    """Valid rows staged for one target partition; ``keys_only``: a backfill's rows outside its months, staged as keys
    and lineage only (they own their keys without being rewritten)."""

    file: DataFile
    keys_only: bool = False


@dataclass(frozen=True)
class Merged:
    """One partition written: its files (uncommitted), the batch's rows that went in, how many of those the table
    kept (the rest were duplicates or older), and the partition's drift profile when drift is measured."""

    files: tuple[DataFile, ...]
    rows_in: int
    kept: int
    partition: str | None = None
    profile: dict[str, Any] | None = None


@dataclass(frozen=True)
class Profiled:
    """The drift profile of one partition's current files (a month before one this batch wrote)."""

    partition: str
    profile: dict[str, Any]


@dataclass(frozen=True)
class Replayed:
    """Quarantined rows of one quarantine file that pass the model now (staged like a batch's)."""

    rows: int


@dataclass(frozen=True)
class Rewritten:
    """A quarantine file rewritten without its replayed rows: the new file (None when no row is left) replaces
    ``replaces``; ``rows`` are left in quarantine, with their current reasons."""

    file: DataFile | None
    rows: int
    replaces: str


@dataclass(frozen=True)
class Orphans:
    """Of the batch's rows checked against a parent table, how many hold a value no parent row has, and the smallest
    few such values."""

    orphans: int
    checked: int
    sample: tuple[Any, ...]


Report = Read | Finding | Quarantined | Staged | Merged | Profiled | Replayed | Rewritten


def plain(value: Any) -> Any:
    """A value as a report carries it: JSON's scalars as they are, anything else as its text."""
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)

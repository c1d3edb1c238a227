"""Landing demo files the way a feed lands them: whole files, never modified once landed."""

from __future__ import annotations

from dataclasses import dataclass

from lakehouse.storage import Storage


@dataclass(frozen=True)
class Landed:
    """What a demo-data generator did: files written, and files already there (left alone)."""

    written: int
    skipped: int


class Lander:
    """Writes files under a root once each: a file already there is skipped, so landing twice lands nothing new."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.written = self.skipped = 0

    def land(self, rel: str, data: bytes) -> None:
        if self.storage.exists(rel):
            self.skipped += 1
            return
        self.storage.write_bytes_atomic(rel, data)
        self.written += 1

    @property
    def landed(self) -> Landed:
        return Landed(written=self.written, skipped=self.skipped)

"""Change data capture: Debezium envelopes parsed into per-key version chains (:mod:`.events`), applied as a
history (SCD2) table and the current state (SCD1) of a silver table (:mod:`.stage`)."""

from lakehouse.cdc.events import SNAPSHOT_LSN, chains, current, parse_events
from lakehouse.cdc.stage import app_id, apply, current_app_id, history_schema

__all__ = ["SNAPSHOT_LSN", "app_id", "apply", "chains", "current", "current_app_id", "history_schema", "parse_events"]

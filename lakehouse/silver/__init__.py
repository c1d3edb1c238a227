"""Silver: typed, validated, deduplicated tables. A batch is planned and committed by :mod:`.build` (partition
overwrite of exactly the touched partitions, or MERGE on keys), checked by :mod:`.gates` before it commits, and
executed by :mod:`.tasks` on workers; :mod:`.replay` takes back quarantined rows that pass now; :mod:`.tables` says
what a silver table is (its name, app ids, schema and partitions)."""

from lakehouse.silver.build import build
from lakehouse.silver.replay import replay
from lakehouse.silver.tables import (
    LINEAGE,
    app_id,
    arrow_schema,
    cdc_app_id,
    files_since,
    lookback_of,
    ref,
    replay_id,
)
from lakehouse.silver.tasks import rejected_records, row_failure

__all__ = [
    "LINEAGE",
    "app_id",
    "arrow_schema",
    "build",
    "cdc_app_id",
    "files_since",
    "lookback_of",
    "ref",
    "rejected_records",
    "replay",
    "replay_id",
    "row_failure",
]

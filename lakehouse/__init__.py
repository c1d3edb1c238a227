"""lakehouse: a medallion ETL engine (bronze → silver → gold Delta tables) on Ray Data, driven by Prefect."""

from lakehouse import checks
from lakehouse.context import RunContext, StageResult
from lakehouse.errors import (
    CommitConflict,
    ConfigError,
    LakehouseError,
    QualityGateFailed,
    SchemaMismatch,
    SourceFileError,
    StageError,
    TableError,
)
from lakehouse.runner import RunReport, backfill, build_gold, build_silver, ingest, pipeline, record, replay, run
from lakehouse.settings import RaySettings, Settings, settings_from_env

__all__ = [
    "CommitConflict",
    "ConfigError",
    "LakehouseError",
    "QualityGateFailed",
    "RaySettings",
    "RunContext",
    "RunReport",
    "SchemaMismatch",
    "Settings",
    "SourceFileError",
    "StageError",
    "StageResult",
    "TableError",
    "backfill",
    "build_gold",
    "build_silver",
    "checks",
    "ingest",
    "pipeline",
    "record",
    "replay",
    "run",
    "settings_from_env",
]

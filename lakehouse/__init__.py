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
    TransformError,
)
from lakehouse.report import quality_report
from lakehouse.runner import RunReport, backfill, build_gold, build_silver, ingest, pipeline_of, record, replay, run
from lakehouse.settings import RaySettings, Settings, settings_from_env
from lakehouse.spec import (
    Cdc,
    Gold,
    Pipeline,
    Silver,
    Source,
    aggregate,
    day,
    lookup,
    month,
    per_partition,
    year,
)

__all__ = [
    "Cdc",
    "CommitConflict",
    "ConfigError",
    "Gold",
    "LakehouseError",
    "Pipeline",
    "QualityGateFailed",
    "RaySettings",
    "RunContext",
    "RunReport",
    "SchemaMismatch",
    "Settings",
    "Silver",
    "Source",
    "SourceFileError",
    "StageError",
    "StageResult",
    "TableError",
    "TransformError",
    "aggregate",
    "backfill",
    "build_gold",
    "build_silver",
    "checks",
    "day",
    "ingest",
    "lookup",
    "month",
    "per_partition",
    "pipeline_of",
    "quality_report",
    "record",
    "replay",
    "run",
    "settings_from_env",
    "year",
]

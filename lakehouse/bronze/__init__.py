"""Bronze: landed files as they are, plus lineage, ingested exactly once per file (:mod:`.stage`), read by the
declared source's format and options (:mod:`.read`); which landed files each bronze data file holds, compacted ones
included (:mod:`.landed`)."""

from lakehouse.bronze.read import file_format
from lakehouse.bronze.stage import LINEAGE, app_id, bronze_schema, data_columns, ingest, pending_files, ref

__all__ = ["LINEAGE", "app_id", "bronze_schema", "data_columns", "file_format", "ingest", "pending_files", "ref"]

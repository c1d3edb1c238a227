"""Delta tables: deltalake's home (:mod:`.delta`: snapshots, the one commit builder, log reading; :mod:`.versions`:
the history of versions and restoring one), MERGE on keys
(:mod:`.merge` plans from the log and commits, :mod:`.merge_tasks` runs on workers), and the key ranges of files
from their statistics (:mod:`.ranges`)."""

from lakehouse.table.delta import (
    META_PREFIX,
    Orphan,
    Snapshot,
    TableFile,
    TableRef,
    add_columns,
    append_rows,
    commit,
    delete_files,
    list_tables,
    merge_rows,
    open_table,
    orphans,
    referenced_paths,
    snapshot,
    to_arrow_dataset,
    txn_version,
    txn_versions,
)
from lakehouse.table.versions import Commit, commits_since, history, restore, watermarks_changed

__all__ = [
    "META_PREFIX",
    "Commit",
    "Orphan",
    "Snapshot",
    "TableFile",
    "TableRef",
    "add_columns",
    "append_rows",
    "commit",
    "commits_since",
    "delete_files",
    "history",
    "list_tables",
    "merge_rows",
    "open_table",
    "orphans",
    "referenced_paths",
    "restore",
    "snapshot",
    "to_arrow_dataset",
    "txn_version",
    "txn_versions",
    "watermarks_changed",
]

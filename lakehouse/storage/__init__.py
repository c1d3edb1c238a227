"""Storage: the root and its filesystems (:mod:`.root`), Parquet data files and their Delta statistics
(:mod:`.files`), and Polars I/O over a table's files (:mod:`.frames`)."""

from lakehouse.storage.root import Storage

__all__ = ["Storage"]

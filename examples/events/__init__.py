"""Web events: NDJSON events partitioned by day, a users dimension (CSV) and a products dimension (Parquet)."""

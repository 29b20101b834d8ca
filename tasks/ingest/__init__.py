"""Ingest: read edge lists and node tables, make splits, build the Parquet snapshot."""

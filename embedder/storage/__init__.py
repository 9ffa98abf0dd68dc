"""Parquet on any pyarrow filesystem: shards, manifest, de-duplication, consolidation."""

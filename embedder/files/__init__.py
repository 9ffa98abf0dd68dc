"""A corpus in files (NDJSON, Parquet, CSV/TSV, pickle) as a source for the pipeline."""

from embedder.files.readers import CorpusReader, detect_format, iter_records, open_source
from embedder.files.records import (
    FORMATS,
    BadCause,
    BadRecord,
    CorpusSource,
    FileRecord,
    Format,
    Record,
    RecordId,
    RowRange,
)

__all__ = [
    "FORMATS",
    "BadCause",
    "BadRecord",
    "CorpusReader",
    "CorpusSource",
    "FileRecord",
    "Format",
    "Record",
    "RecordId",
    "RowRange",
    "detect_format",
    "iter_records",
    "open_source",
]

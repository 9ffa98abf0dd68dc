"""What a file corpus is made of: its source, its records, bad records and row ranges.

Every record of a file corpus has a ``position``: its 0-based place in the corpus order (the
line of an NDJSON file, the row of a Parquet dataset with its files in path order, the data row
of a CSV, the item of a pickled list, dict or DataFrame). Positions are the same on every run
over the same files, so they serve as ids when the corpus has none, as the unit of chunks and
as the order of an export.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from embedder.errors import ConfigurationError

Format = Literal["jsonl", "parquet", "csv", "tsv", "pickle"]
FORMATS: tuple[Format, ...] = ("jsonl", "parquet", "csv", "tsv", "pickle")

RecordId = str | int


@dataclass(frozen=True, slots=True)
class CorpusSource:
    """A file corpus and how to read it.

    ``uri``: a local path or a ``pyarrow.fs`` URI (``s3://bucket/key``, ``gs://...``): one
    file, or for Parquet a dataset directory. ``text_field`` and ``id_field`` are dotted paths
    into a record (``meta.title``); without ``id_field`` a record's id is its position.
    """

    uri: str
    format: Format
    text_field: str = "text"
    id_field: str | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigurationError(
                f"unknown corpus format {self.format!r} (one of {', '.join(FORMATS)})"
            )
        if not self.text_field:
            raise ConfigurationError("the text field must be named")
        if self.id_field == "":
            raise ConfigurationError("the id field, when given, must be named")


class BadCause(enum.StrEnum):
    """Why a record cannot be embedded; the value is the ``cause`` of a failures-file line and
    of the metrics. Text problems (missing, empty, not a string) are judged where MongoDB docs'
    are, by :func:`embedder.worker.documents.to_doc`."""

    MALFORMED = "malformed"  # not parseable: a broken JSON line, a CSV row of the wrong width
    NOT_AN_OBJECT = "not_an_object"  # a JSON line that is a number, string or array
    MISSING_ID = "missing_id"
    BAD_ID = "bad_id"  # an id that is neither a string nor an integer
    DUPLICATE_ID = "duplicate_id"

    @property
    def summary(self) -> str:
        """The cause in words, for the run summary (the failures file has each reason)."""
        return {
            BadCause.MALFORMED: "malformed record (not valid JSON, or a CSV row of the wrong width)",
            BadCause.NOT_AN_OBJECT: "a JSON line that is not an object",
            BadCause.MISSING_ID: "no id in the id field",
            BadCause.BAD_ID: "an id that is neither a string nor an integer",
            BadCause.DUPLICATE_ID: "an id that an earlier record has",
        }[self]


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One record read from a corpus file.

    ``text`` is the value found at the text field, unchecked (``None`` when it is missing);
    ``line_or_row`` is 1-based, for people: the line of an NDJSON file, the row otherwise.
    """

    position: int
    id: RecordId
    text: object
    line_or_row: int


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A record that cannot be embedded, found while reading: it never stops a run.

    ``id`` is known where the record parsed far enough to have one. A CSV row that could not
    be parsed has no row number (its fields may span lines): its ``position`` is that of the
    first good row parsed in the same block, the same on every run, and its reason quotes it.
    """

    position: int
    line_or_row: int
    id: RecordId | None
    reason: str
    cause: BadCause


Record = FileRecord | BadRecord


@dataclass(frozen=True, slots=True)
class RowRange:
    """The records at positions ``start`` (inclusive) to ``stop`` (exclusive).

    For an uncompressed NDJSON file, ``offset`` and ``end_offset`` are the bytes where line
    ``start`` begins and where line ``stop`` begins (or the file ends), found by one streaming
    pass, so a reader seeks there instead of reading what comes before.
    """

    start: int
    stop: int
    offset: int | None = None
    end_offset: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.stop:
            raise ValueError(f"bad row range [{self.start}, {self.stop})")
        if (self.offset is None) != (self.end_offset is None):
            raise ValueError("a row range has both byte offsets or neither")

    def __contains__(self, position: object) -> bool:
        return isinstance(position, int) and self.start <= position < self.stop

    @property
    def rows(self) -> int:
        return self.stop - self.start

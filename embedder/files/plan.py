"""Cutting a file corpus into chunks, once, and keeping the cut beside the output.

A chunk is a range of positions: whole Parquet row groups (merged up to ``chunk_rows``), or
``chunk_rows`` lines of an NDJSON file with the byte offsets where they begin (found by one
streaming pass, so a worker seeks straight to its chunk), or ``chunk_rows`` rows of a CSV or
pickle. The plan also names the records whose id an earlier record already has (with
``--id-field``: the planning pass reads every selected record's id once).

The plan is deterministic: the same corpus, chunk size and selection give the same chunks on
every host, so ``--part I/N`` outputs planned on clusters that share no storage fit together,
and the consolidator can check that they do.

A selection takes the whole corpus, its first ``limit`` rows, or a seeded random ``sample``
of rows, and then one part of those chunks (contiguous runs of chunks).
"""

from __future__ import annotations

import bisect
import hashlib
import io
import itertools
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import orjson
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from embedder.errors import ConfigurationError
from embedder.files.readers import CorpusReader, is_compressed, parquet_files
from embedder.files.records import CorpusSource, FileRecord, RecordId, RowRange

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 2000
PLAN_VERSION = 1
_BLOCK = 8 << 20


@dataclass(frozen=True, slots=True)
class Selection:
    """Which rows a run takes: all, the first ``limit``, or ``sample`` of them drawn with
    ``seed``; then part ``part`` of ``parts``."""

    limit: int | None = None
    sample: int | None = None
    seed: int = 0
    part: int = 1
    parts: int = 1

    def __post_init__(self) -> None:
        if self.limit is not None and self.sample is not None:
            raise ConfigurationError("--limit and --sample choose rows two ways: give one")
        for name, value in (("limit", self.limit), ("sample", self.sample)):
            if value is not None and value < 1:
                raise ConfigurationError(f"--{name} must be at least 1, not {value}")
        if not 1 <= self.part <= self.parts:
            raise ConfigurationError(f"--part {self.part}/{self.parts}: I must be within 1..N")

    @property
    def rows_label(self) -> str:
        """Which rows, as a path segment: ``all``, ``limit-1000``, ``sample-1000-seed-7``."""
        if self.limit is not None:
            return f"limit-{self.limit}"
        if self.sample is not None:
            return f"sample-{self.sample}-seed-{self.seed}"
        return "all"

    def describe(self) -> str:
        part = f", part {self.part}/{self.parts}" if self.parts > 1 else ""
        return f"{self.rows_label.replace('-', ' ')}{part}"


@dataclass(frozen=True, slots=True)
class Chunk:
    """Positions ``start`` to ``stop`` (the byte ``offset``s where they begin, for a plain
    NDJSON file); a sample's chunk takes only the positions in ``only``."""

    index: int
    start: int
    stop: int
    offset: int | None = None
    end_offset: int | None = None
    only: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return f"chunk-{self.index:06d}"

    @property
    def range(self) -> RowRange:
        return RowRange(self.start, self.stop, self.offset, self.end_offset)

    @property
    def rows(self) -> int:
        return len(self.only) if self.only else self.stop - self.start

    def takes(self, position: int) -> bool:
        return self.start <= position < self.stop and (
            not self.only or _contains(self.only, position)
        )


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    source: CorpusSource
    fingerprint: str  # the corpus's files: their sizes, in order
    chunk_rows: int
    selection: Selection
    chunks: tuple[Chunk, ...]  # of every part
    duplicates: dict[int, int] = field(default_factory=dict)  # position -> first position
    version: int = PLAN_VERSION

    @property
    def rows(self) -> int:
        return sum(c.rows for c in self.chunks)

    def part_chunks(self) -> tuple[Chunk, ...]:
        """This selection's part: a contiguous run of chunks (parts differ by one at most)."""
        count, parts, part = len(self.chunks), self.selection.parts, self.selection.part
        return self.chunks[(part - 1) * count // parts : part * count // parts]

    def to_bytes(self) -> bytes:
        body = asdict(self)
        body["duplicates"] = {str(k): v for k, v in self.duplicates.items()}
        return orjson.dumps(body)

    @classmethod
    def from_bytes(cls, raw: bytes) -> ChunkPlan:
        body = orjson.loads(raw)
        return cls(
            source=CorpusSource(**body["source"]),
            fingerprint=body["fingerprint"],
            chunk_rows=body["chunk_rows"],
            selection=Selection(**body["selection"]),
            chunks=tuple(Chunk(**{**c, "only": tuple(c.get("only", ()))}) for c in body["chunks"]),
            duplicates={int(k): int(v) for k, v in body.get("duplicates", {}).items()},
            version=body.get("version", PLAN_VERSION),
        )

    def mismatch(self, other: ChunkPlan, *, same_part: bool = True) -> str | None:
        """Why ``other`` is not a plan of the same run, as "what: ours vs theirs" (None when
        it is)."""
        mine, theirs = self.source, other.source
        checks = [
            ("format", mine.format, theirs.format),
            ("text field", mine.text_field, theirs.text_field),
            ("id field", mine.id_field, theirs.id_field),
            ("corpus files (sizes)", self.fingerprint, other.fingerprint),
            ("chunk rows", self.chunk_rows, other.chunk_rows),
            ("rows", self.selection.rows_label, other.selection.rows_label),
            ("parts", self.selection.parts, other.selection.parts),
        ]
        if same_part:
            checks.append(("part", self.selection.part, other.selection.part))
        for what, ours, other_value in checks:
            if ours != other_value:
                return f"{what}: {ours!r} vs {other_value!r}"
        return None


def build_plan(
    reader: CorpusReader, selection: Selection, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> ChunkPlan:
    """Cut the corpus of ``reader`` for ``selection`` (a streaming pass where it takes one)."""
    if chunk_rows < 1:
        raise ConfigurationError(f"chunk rows must be at least 1, not {chunk_rows}")
    source = reader.source
    log.info("planning the chunks of %s (%s)", source.uri, selection.describe())
    bounds = _boundaries(reader, chunk_rows, selection.limit)
    chunks = _chunks(bounds, selection, chunk_rows)
    duplicates = _duplicates(reader, chunks) if source.id_field is not None else {}
    if not chunks:
        raise ConfigurationError(f"{source.uri} holds no records")
    if selection.parts > len(chunks):
        raise ConfigurationError(
            f"--part .../{selection.parts}: the corpus has only {len(chunks)} chunks of "
            f"{chunk_rows} rows; use fewer parts or smaller --chunk-rows"
        )
    plan = ChunkPlan(source, fingerprint(reader), chunk_rows, selection, tuple(chunks), duplicates)
    log.info(
        "planned %d chunks of up to %d rows (%d rows, %d duplicate ids)",
        len(chunks),
        chunk_rows,
        plan.rows,
        len(duplicates),
    )
    return plan


def fingerprint(reader: CorpusReader) -> str:
    """The sizes of the corpus's files, in order: the same corpus copied to another cluster
    (another path, other modification times) has the same fingerprint."""
    fs, path = reader.filesystem
    files = parquet_files(fs, path) if reader.source.format == "parquet" else [path]
    sizes = [fs.get_file_info(f).size or 0 for f in files]
    return hashlib.blake2b(orjson.dumps(sizes), digest_size=8).hexdigest()


Boundary = tuple[int, int | None]  # a position where a chunk may begin, and its byte offset


def _boundaries(reader: CorpusReader, chunk_rows: int, limit: int | None) -> list[Boundary]:
    """Positions where chunks may begin, ending with the number of positions (up to
    ``limit``)."""
    fs, path = reader.filesystem
    fmt = reader.source.format
    stop = limit if limit is not None else 1 << 62
    if fmt == "jsonl":
        with fs.open_input_stream(path, compression="detect") as stream:
            lines = _line_boundaries(stream, chunk_rows, stop)
        # A compressed file cannot be seeked: its offsets would mislead.
        return [(p, None) for p, _ in lines] if is_compressed(path) else lines
    if fmt == "parquet":
        return _row_group_boundaries(fs, path, chunk_rows, stop)
    total = min(reader.count(), stop)
    rows: list[Boundary] = [(p, None) for p in range(0, total, chunk_rows)]
    return [*rows, (total, None)]


def _line_boundaries(stream: pafs.NativeFile, every: int, stop: int) -> list[Boundary]:
    """Every ``every``-th line's start, found by scanning for newlines a block at a time."""
    bounds: list[Boundary] = [(0, 0)]
    lines, offset, line_open = 0, 0, False
    buffered = io.BufferedReader(stream, _BLOCK)
    while lines < stop and (block := buffered.read(_BLOCK)):
        ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 0x0A)
        first = every - lines % every  # the next boundary, counted in this block's newlines
        for index in range(first - 1, len(ends), every):
            if lines + index + 1 > stop:
                break
            bounds.append((lines + index + 1, offset + int(ends[index]) + 1))
        if lines + len(ends) >= stop:
            cut = stop - lines
            end = offset + int(ends[cut - 1]) + 1
            if bounds[-1][0] != stop:
                bounds.append((stop, end))
            return bounds
        lines += len(ends)
        line_open = bool(len(block)) and block[-1:] != b"\n"
        offset += len(block)
    if line_open:  # a last line without a newline
        lines += 1
    if bounds[-1][0] != lines:
        bounds.append((lines, offset))
    return bounds


def _row_group_boundaries(
    fs: pafs.FileSystem, path: str, chunk_rows: int, stop: int
) -> list[Boundary]:
    """Whole row groups, consecutive ones merged while they fit in ``chunk_rows``."""
    bounds: list[Boundary] = [(0, None)]
    position = 0
    for file in parquet_files(fs, path):
        meta = pq.ParquetFile(fs.open_input_file(file)).metadata
        for group in range(meta.num_row_groups):
            size = meta.row_group(group).num_rows
            if position + size - bounds[-1][0] > chunk_rows and position > bounds[-1][0]:
                bounds.append((position, None))
            position += size
            if position >= stop:
                if bounds[-1][0] != stop:
                    bounds.append((stop, None))
                return bounds
    if bounds[-1][0] != position:
        bounds.append((position, None))
    return bounds


def _chunks(bounds: list[Boundary], selection: Selection, chunk_rows: int) -> list[Chunk]:
    total = bounds[-1][0]
    if selection.sample is None:
        return [
            Chunk(i, start, stop, offset, end)
            for i, ((start, offset), (stop, end)) in enumerate(itertools.pairwise(bounds))
            if stop > start
        ]
    if selection.sample > total:
        raise ConfigurationError(f"--sample {selection.sample}: the corpus has {total} rows")
    chosen = sorted(random.Random(selection.seed).sample(range(total), selection.sample))
    starts = [p for p, _ in bounds]
    chunks = []
    for index, first in enumerate(range(0, len(chosen), chunk_rows)):
        group = chosen[first : first + chunk_rows]
        low = bisect.bisect_right(starts, group[0]) - 1
        high = bisect.bisect_left(starts, group[-1] + 1)
        (start, offset), (stop, end) = bounds[low], bounds[high]
        chunks.append(Chunk(index, start, stop, offset, end, tuple(group)))
    return chunks


def _duplicates(reader: CorpusReader, chunks: Sequence[Chunk]) -> dict[int, int]:
    """Records whose id an earlier record has: position -> the earlier record's position."""
    first: dict[RecordId, int] = {}
    duplicates: dict[int, int] = {}
    for record in _selected(reader, chunks):
        seen = first.setdefault(record.id, record.position)
        if seen != record.position:
            duplicates[record.position] = seen
    return duplicates


def _selected(reader: CorpusReader, chunks: Sequence[Chunk]) -> Iterator[FileRecord]:
    for chunk in chunks:
        for record in reader.records(chunk.range):
            if isinstance(record, FileRecord) and chunk.takes(record.position):
                yield record


def _contains(sorted_positions: tuple[int, ...], position: int) -> bool:
    at = bisect.bisect_left(sorted_positions, position)
    return at < len(sorted_positions) and sorted_positions[at] == position

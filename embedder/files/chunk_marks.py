"""What a finished chunk leaves beside its shard: its bad records and its done mark.

A chunk's failures (``_files/failures/<chunk>.jsonl``, one JSON object a line: ``position``,
``line_or_row``, ``id``, ``reason``, ``cause``) are written before its mark, and its mark
(``_files/done/<chunk>.json``) after its shard is durable: the mark says the chunk is done,
as a doc's mark does in MongoDB. Both are written whole, and rewritten identically when a
chunk is redone after a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import orjson
import pyarrow as pa

from embedder.errors import StorageError
from embedder.files.layout import FilesOutput
from embedder.files.records import BadRecord, RecordId
from embedder.storage import filesystems as storage

log = logging.getLogger(__name__)

TEXT_CAUSE = "text"  # a text the pipeline or the fleet refused (missing, empty, too long...)


@dataclass(frozen=True, slots=True)
class Failure:
    """One line of a failures file."""

    position: int
    line_or_row: int
    id: RecordId | None
    reason: str
    cause: str

    @classmethod
    def of(cls, bad: BadRecord) -> Failure:
        return cls(bad.position, bad.line_or_row, bad.id, bad.reason, bad.cause.value)

    def to_line(self) -> bytes:
        return orjson.dumps(asdict(self)) + b"\n"

    @classmethod
    def from_line(cls, raw: bytes) -> Failure:
        return cls(**orjson.loads(raw))


@dataclass(frozen=True, slots=True)
class ChunkDone:
    """A chunk's mark: its shard, what became of its rows, who did it and when."""

    chunk: str
    shard: str
    embedded: int
    failed: int
    shard_bytes: int
    host: str
    pid: int
    claimed_at: float  # Unix seconds
    finished_at: float

    def to_bytes(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_bytes(cls, raw: bytes) -> ChunkDone:
        return cls(**orjson.loads(raw))


def write_failures(output: FilesOutput, chunk: str, failures: Iterable[Failure]) -> None:
    data = b"".join(f.to_line() for f in sorted(failures, key=lambda f: f.position))
    if data:
        _write(output, output.failures_path(chunk), data)


def write_done(output: FilesOutput, done: ChunkDone) -> None:
    _write(output, output.done_path(done.chunk), done.to_bytes())


def done_chunks(output: FilesOutput) -> set[str]:
    return set(output.names(output.done, ".json"))


def read_done(output: FilesOutput) -> list[ChunkDone]:
    marks = []
    for name in output.names(output.done, ".json"):
        try:
            marks.append(
                ChunkDone.from_bytes(storage.read_bytes(output.fs, output.done_path(name)))
            )
        except FileNotFoundError:
            continue
        except (OSError, pa.ArrowException, orjson.JSONDecodeError, TypeError) as exc:
            raise StorageError(f"cannot read the mark of {name} in {output.uri}: {exc}") from exc
    return marks


def read_failures(output: FilesOutput) -> Iterator[Failure]:
    """Every failure of the output's done chunks, chunk by chunk."""
    for name in output.names(output.failures, ".jsonl"):
        try:
            raw = storage.read_bytes(output.fs, output.failures_path(name))
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(
                f"cannot read the failures of {name} in {output.uri}: {exc}"
            ) from exc
        for line in raw.splitlines():
            if line.strip():
                yield Failure.from_line(line)


def _write(output: FilesOutput, path: str, data: bytes) -> None:
    try:
        storage.write_bytes_atomically(output.fs, path, data)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot write {path}: {exc}") from exc

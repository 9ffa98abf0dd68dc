"""Finding duplicate rows by ``_id`` across many Parquet files, in bounded memory.

Only the key columns are read (pyarrow, so any ``pyarrow.fs`` works and a corrupt file is
known by name), in batches, into an on-disk DuckDB work database under a memory limit that
spills what does not fit. The losing rows stay in that database: the caller walks them as a
stream sorted by (file, row), one small batch at a time, while it rewrites the files. Neither
the keys nor the losers are ever held in Python, so the input size never sets the memory.

Which row wins does not depend on any host's clock: the highest ``claim_seq`` (issued by
MongoDB when the row's docs were claimed, see ``embedder.queue.work_queue``) wins; rows without one
(shards of older versions) rank below every row with one; ``embedded_at``, then the later
file and row, only break ties.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from embedder.storage.workdb import open_work_db

CLAIM_SEQ = "claim_seq"
KEY_COLUMNS = ["_id", "_id_kind", "embedded_at"]
_KEY_SCHEMA = pa.schema(
    [
        ("_id", pa.string()),
        ("_id_kind", pa.string()),
        (CLAIM_SEQ, pa.int64()),
        ("embedded_at", pa.int64()),
        ("file", pa.int32()),
        ("row", pa.int64()),
    ]
)
_READ_ROWS = 65_536
# While the losers are streamed (and the caller rewrites files beside it), the work database
# gives back all but this much of its memory: the sort of (file, row) pairs spills.
_STREAM_MEMORY_MB = 64

_CREATE_KEYS = """
CREATE TABLE keys (_id VARCHAR, _id_kind VARCHAR, claim_seq BIGINT, embedded_at BIGINT,
                   file INTEGER, "row" BIGINT)
"""
_CREATE_LOSERS = """
CREATE TABLE losers AS
WITH dups AS (SELECT _id, _id_kind FROM keys GROUP BY ALL HAVING count(*) > 1)
SELECT file, "row" FROM (
  SELECT k.file, k."row", row_number() OVER (
    PARTITION BY k._id, k._id_kind
    ORDER BY k.claim_seq DESC NULLS LAST, k.embedded_at DESC, k.file DESC, k."row" DESC) AS rank
  FROM keys k SEMI JOIN dups USING (_id, _id_kind)
) WHERE rank > 1
"""


@dataclass(slots=True)
class Losers:
    """The losing rows, kept in the work database: counts per file, and a sorted stream."""

    counts: dict[int, int]  # file index -> losing rows in it (one entry per file, not per row)
    unreadable: dict[int, str]  # file index -> why its keys could not be read
    _con: duckdb.DuckDBPyConnection | None = field(default=None, repr=False)

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def stream(self, batch_rows: int = _READ_ROWS) -> LoserStream:
        """Every losing (file, row), sorted, read from the work database a batch at a time."""
        if self._con is None:
            return LoserStream(iter(()))
        query = self._con.sql('SELECT file, "row" FROM losers ORDER BY file, "row"')
        return LoserStream(iter(query.to_arrow_reader(batch_rows)))


class LoserStream:
    """Hands out the losing row numbers of one file at a time, in file order."""

    def __init__(self, batches: Iterator[pa.RecordBatch]) -> None:
        self._batches = batches
        self._files = np.empty(0, np.int32)
        self._rows = np.empty(0, np.int64)

    def take(self, file: int, end: int) -> np.ndarray:
        """The losing rows of ``file`` below ``end``, consumed. Files are asked in ascending
        order and rows in ascending ranges; losers of files never asked are skipped."""
        parts: list[np.ndarray] = []
        while True:
            if not len(self._rows) and not self._next():
                break
            # The stream is sorted by (file, row), so what this call consumes is a prefix.
            before = (self._files < file) | ((self._files == file) & (self._rows < end))
            n = int(np.count_nonzero(before))
            parts.append(self._rows[:n][self._files[:n] == file])
            self._files, self._rows = self._files[n:], self._rows[n:]
            if len(self._rows):
                break
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def _next(self) -> bool:
        batch = next(self._batches, None)
        if batch is None:
            return False
        self._files = batch.column(0).to_numpy().astype(np.int32, copy=False)
        self._rows = batch.column(1).to_numpy().astype(np.int64, copy=False)
        return True


@contextlib.contextmanager
def find_losers(
    files: Sequence[tuple[pafs.FileSystem, str]], *, memory_limit: int, work_dir: Path
) -> Iterator[Losers]:
    """``files`` are (filesystem, path) pairs, so one pass spans shards and output. The
    losers can be streamed until the context ends."""
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="dedup-") as tmp:
        con = open_work_db(Path(tmp), memory_limit)
        try:
            con.execute(_CREATE_KEYS)
            unreadable = {
                index: reason
                for index, (fs, path) in enumerate(files)
                if (reason := _load_keys(con, index, fs, path)) is not None
            }
            con.execute(_CREATE_LOSERS)
            counts = con.execute("SELECT file, count(*) FROM losers GROUP BY file").fetchall()
            con.execute("DROP TABLE keys")
            con.execute(f"SET memory_limit = '{_STREAM_MEMORY_MB}MB'")
            yield Losers({int(f): int(n) for f, n in counts}, unreadable, con)
        finally:
            con.close()


def _load_keys(
    con: duckdb.DuckDBPyConnection, index: int, fs: pafs.FileSystem, path: str
) -> str | None:
    """One file's keys into the work database, or why not. The insert is one statement, so a
    file that fails part-way adds no keys at all: a row of it must never make a good row
    elsewhere lose."""
    failure: list[str] = []
    try:
        with fs.open_input_file(path) as handle:
            stream = pa.RecordBatchReader.from_batches(
                _KEY_SCHEMA, _file_keys(pq.ParquetFile(handle), index, failure)
            )
            con.register("key_stream", stream)
            try:
                con.execute("INSERT INTO keys SELECT * FROM key_stream")
            finally:
                con.unregister("key_stream")
    except duckdb.InterruptException:
        raise KeyboardInterrupt from None  # Ctrl-C while DuckDB read: not the file's fault
    except (OSError, pa.ArrowException, duckdb.Error) as exc:
        if failure and failure[0] is _INTERRUPTED:
            raise KeyboardInterrupt from None  # Ctrl-C in our stream, which DuckDB wrapped
        if isinstance(exc, duckdb.Error) and "KeyboardInterrupt" in str(exc):
            # Ctrl-C in DuckDB's own calls into the stream (counting it, say): DuckDB keeps
            # only the exception's name in its message.
            raise KeyboardInterrupt from None
        return failure[0] if failure else f"{type(exc).__name__}: {exc}"
    return None


# Put first in ``failure`` when Ctrl-C stops a file's key stream: DuckDB reports it as the
# stream's error, which must not make the file look unreadable.
_INTERRUPTED = "interrupted"


def _file_keys(parquet: pq.ParquetFile, index: int, failure: list[str]) -> Iterator[pa.RecordBatch]:
    has_seq = CLAIM_SEQ in parquet.schema_arrow.names
    columns = [*KEY_COLUMNS, CLAIM_SEQ] if has_seq else KEY_COLUMNS
    offset = 0
    try:
        for keys in parquet.iter_batches(batch_size=_READ_ROWS, columns=columns):
            count = keys.num_rows
            seq = (
                keys.column(CLAIM_SEQ).cast(pa.int64()) if has_seq else pa.nulls(count, pa.int64())
            )
            yield pa.record_batch(
                [
                    keys.column("_id"),
                    keys.column("_id_kind").cast(pa.string()),
                    seq,
                    keys.column("embedded_at").cast(pa.int64()),
                    pa.array(np.full(count, index, np.int32)),
                    pa.array(np.arange(offset, offset + count, dtype=np.int64)),
                ],
                schema=_KEY_SCHEMA,
            )
            offset += count
    except (OSError, pa.ArrowException) as exc:
        # DuckDB reports a failing stream in its own words; keep the reader's.
        failure.append(f"{type(exc).__name__}: {exc}")
        raise
    except KeyboardInterrupt:
        failure.insert(0, _INTERRUPTED)
        raise

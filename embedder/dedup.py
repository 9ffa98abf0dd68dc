"""Finding duplicate rows by ``_id`` across many Parquet files, in bounded memory.

Only the key columns are read (pyarrow, so any ``pyarrow.fs`` works and a corrupt file is
known by name); DuckDB holds them in an on-disk work database under a memory limit and
spills what does not fit, so the input size never sets the memory. The answer is small:
for each file, the row numbers that lose to a newer row of the same id.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from embedder.workdb import open_work_db

KEY_COLUMNS = ["_id", "_id_kind", "embedded_at"]
_KEY_SCHEMA = pa.schema(
    [
        ("_id", pa.string()),
        ("_id_kind", pa.string()),
        ("embedded_at", pa.int64()),
        ("file", pa.int32()),
        ("row", pa.int64()),
    ]
)

# The newest row of an id wins; ties go to the later file (shards sort by time), then row.
_LOSERS = """
WITH dups AS (SELECT _id, _id_kind FROM keys GROUP BY ALL HAVING count(*) > 1)
SELECT file, row FROM (
  SELECT k.file, k.row, row_number() OVER (
    PARTITION BY k._id, k._id_kind ORDER BY k.embedded_at DESC, k.file DESC, k.row DESC) AS rank
  FROM keys k SEMI JOIN dups USING (_id, _id_kind)
) WHERE rank > 1 ORDER BY file, row
"""


@dataclass(frozen=True, slots=True)
class Losers:
    """Row numbers to drop, per file index; files whose keys could not be read, and why."""

    rows: dict[int, np.ndarray]
    unreadable: dict[int, str]

    @property
    def count(self) -> int:
        return sum(len(r) for r in self.rows.values())


def find_losers(
    files: Sequence[tuple[pafs.FileSystem, str]], *, memory_limit: int, work_dir: Path
) -> Losers:
    """``files`` are (filesystem, path) pairs, so one pass spans shards and output."""
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="dedup-") as tmp:
        con = open_work_db(Path(tmp), memory_limit)
        try:
            unreadable: dict[int, str] = {}
            stream = pa.RecordBatchReader.from_batches(_KEY_SCHEMA, _key_batches(files, unreadable))
            con.register("key_stream", stream)
            con.execute("CREATE TABLE keys AS SELECT * FROM key_stream")
            con.unregister("key_stream")
            table: pa.Table = con.sql(_LOSERS).to_arrow_table()
        finally:
            con.close()
    files = table["file"].to_numpy()
    rows = table["row"].to_numpy()
    return Losers({int(f): rows[files == f] for f in np.unique(files)}, unreadable)


def _key_batches(
    files: Sequence[tuple[pafs.FileSystem, str]], unreadable: dict[int, str]
) -> Iterator[pa.RecordBatch]:
    """Each file's keys, read whole before any is yielded: a file that fails part-way must
    add no keys at all, or a row of it could make a good row elsewhere lose."""
    for index, (fs, path) in enumerate(files):
        try:
            with fs.open_input_file(path) as handle:
                keys = pq.read_table(handle, columns=KEY_COLUMNS)
        except (OSError, pa.ArrowException) as exc:
            unreadable[index] = f"{type(exc).__name__}: {exc}"
            continue
        count = keys.num_rows
        table = pa.table(
            [
                keys.column("_id"),
                keys.column("_id_kind").cast(pa.string()),
                keys.column("embedded_at").cast(pa.int64()),
                pa.array(np.full(count, index, np.int32)),
                pa.array(np.arange(count, dtype=np.int64)),
            ],
            schema=_KEY_SCHEMA,
        )
        yield from table.to_batches(max_chunksize=65_536)

"""One shard per chunk: the shard writer of a file corpus.

The pipeline hands rows to a shard writer and "rolls" it now and then; with a file corpus
every row carries its chunk's number (as its claim number), and this writer keeps each
chunk's rows apart until the chunk is complete. Then the file queue, which alone knows when a
chunk's last doc is embedded or failed, has it published under the chunk's own name
(``chunk-000012.parquet``): the same name whoever writes it, so a chunk redone after a crash
replaces its shard rather than adding a second one.

Memory: the rows of the chunks in flight (a few chunks of ``chunk_rows`` vectors each).
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedder.errors import StorageError
from embedder.storage import filesystems as storage
from embedder.storage.shards import PARQUET_OPTIONS, SHARD_SUFFIX, ShardReceipt, ShardWriter


class ChunkShardWriter(ShardWriter):
    """Rows grouped by chunk; ``publish`` writes one chunk's shard. Blocking: call from a
    thread. ``roll`` publishes nothing: it only says the pipeline may mark (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._chunks: dict[int, list[pa.RecordBatch]] = defaultdict(list)
        self._since_roll = 0
        self.opened_at = time.monotonic()

    def append(
        self,
        ids: list[Any],
        vectors: np.ndarray,
        at: dt.datetime,
        text_hashes: Sequence[bytes],
        claim_seqs: Sequence[int] | None = None,
    ) -> None:
        if claim_seqs is None:
            raise StorageError("a file corpus's rows carry their chunk numbers")
        batch = self._record_batch(ids, vectors, at, text_hashes, claim_seqs)
        seqs = np.asarray(claim_seqs, np.int64)
        for chunk in np.unique(seqs):
            rows = np.flatnonzero(seqs == chunk)
            self._chunks[int(chunk)].append(
                batch if len(rows) == len(seqs) else batch.take(pa.array(rows))
            )
        if self._since_roll == 0:
            self.opened_at = time.monotonic()
        self._since_roll += len(ids)
        self.rows += len(ids)

    def due(self) -> bool:
        return self._since_roll > 0 and (
            self._since_roll >= self.settings.max_rows
            or time.monotonic() - self.opened_at >= self.settings.max_age_s
        )

    @property
    def room(self) -> int:
        return max(0, self.settings.max_rows - self._since_roll)

    def seconds_until_due(self) -> float:
        if self._since_roll == 0:
            return self.settings.max_age_s
        return max(0.0, self.opened_at + self.settings.max_age_s - time.monotonic())

    def roll(self) -> ShardReceipt | None:
        self._since_roll = 0
        return None

    def publish(self, chunk: int, name: str) -> ShardReceipt:
        """Write chunk ``chunk``'s rows (none, for a chunk of bad records only) as the shard
        ``name`` and make it durable in cold storage."""
        batches = self._chunks.pop(chunk, [])
        table = pa.Table.from_batches(batches, self._schema)
        file_name = f"{name}{SHARD_SUFFIX}"
        hot = self._hot / f".{file_name}.tmp"
        try:
            pq.write_table(table, str(hot), row_group_size=len(table) or None, **PARQUET_OPTIONS)
            storage.fsync_file(hot)
            size = hot.stat().st_size
            self._publish(hot, file_name)
        except (OSError, pa.ArrowException) as exc:
            hot.unlink(missing_ok=True)
            raise StorageError(
                f"writing shard {file_name} to {self.settings.cold_uri}: {exc}"
            ) from exc
        self.rows -= len(table)
        return ShardReceipt(file_name, len(table), size)

    def drop(self, chunk: int) -> None:
        """Forget a chunk given up unfinished (it is redone by whoever claims it next)."""
        dropped = self._chunks.pop(chunk, [])
        self.rows -= sum(b.num_rows for b in dropped)

    def abandon(self) -> None:
        self._chunks.clear()
        self._since_roll = self.rows = 0

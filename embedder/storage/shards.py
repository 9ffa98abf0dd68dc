"""Parquet shards: rows of (id, vector, model, time), made durable before anything is marked.

A shard grows in a private hot directory and reaches cold storage whole: on a local disk by
fsync and rename inside the target directory; on an object store (S3, GCS through
``pyarrow.fs``) by one upload, which readers see complete or not at all. Names starting
with ``.`` are never final, so readers (the consolidator, DuckDB, pyarrow datasets) skip them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from embedder.errors import StorageError
from embedder.identity import TEXT_HASH_BYTES
from embedder.ids import encode_id
from embedder.storage import filesystems as storage
from embedder.storage.schema import ShardMetadata, shard_schema

log = logging.getLogger(__name__)

SHARD_SUFFIX = ".parquet"
# Vectors are near-random floats: dictionary encoding only costs CPU, and byte-stream-split
# before zstd compresses them best. The id and metadata columns are small either way.
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "use_dictionary": ["_id_kind", "model", "model_sha"],
    "use_byte_stream_split": ["embedding.list.element"],
}
_ROW_GROUP_ROWS = 8192


@dataclass(frozen=True, slots=True)
class ShardReceipt:
    name: str
    rows: int
    bytes: int


@dataclass(frozen=True, slots=True)
class ShardSettings:
    cold_uri: str
    hot_dir: Path
    max_rows: int = 50_000
    max_age_s: float = 300.0
    prefix: str = "shard"
    filesystem: pafs.FileSystem | None = None  # a configured pyarrow.fs for cold_uri

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.max_age_s <= 0:
            raise StorageError("shard rows and age limits must be positive")


class ShardWriter:
    """Accumulates embedded rows into one open shard at a time. Blocking: call from a thread."""

    def __init__(
        self, settings: ShardSettings, *, owner: str, dimension: int, metadata: ShardMetadata
    ) -> None:
        self.settings = settings
        self._schema = shard_schema(dimension, metadata)
        self._dimension = dimension
        self._model = metadata.model_id
        self._model_sha = metadata.model_sha
        self._cold_fs, self._cold_root = storage.open_root(
            settings.cold_uri, filesystem=settings.filesystem
        )
        self._hot = _own_hot_dir(settings.hot_dir, owner)
        # A read-only or full disk fails here, naming the path, before anything is claimed.
        storage.check_writable(self._cold_fs, self._cold_root)
        storage.check_writable(pafs.LocalFileSystem(), str(self._hot))
        self._owner = owner[:8]
        self._seq = 0
        self._writer: pq.ParquetWriter | None = None
        self._hot_path: Path | None = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self.rows = 0
        self.opened_at = 0.0

    def append(
        self,
        ids: list[Any],
        vectors: np.ndarray,
        at: dt.datetime,
        text_hashes: Sequence[bytes],
        claim_seqs: Sequence[int] | None = None,
    ) -> None:
        batch = self._record_batch(ids, vectors, at, text_hashes, claim_seqs)
        if self._writer is None:
            self._open()
        self._pending.append(batch)
        self._pending_rows += len(ids)
        self.rows += len(ids)
        if self._pending_rows >= _ROW_GROUP_ROWS:
            self._flush_pending()

    def _record_batch(
        self,
        ids: list[Any],
        vectors: np.ndarray,
        at: dt.datetime,
        text_hashes: Sequence[bytes],
        claim_seqs: Sequence[int] | None,
    ) -> pa.RecordBatch:
        """The rows of ``ids`` in the shard schema."""
        if claim_seqs is not None and len(claim_seqs) != len(ids):
            raise StorageError(f"{len(claim_seqs)} claim sequence numbers for {len(ids)} ids")
        if vectors.shape != (len(ids), self._dimension) or len(text_hashes) != len(ids):
            raise StorageError(
                f"vectors of shape {vectors.shape} and {len(text_hashes)} text hashes for "
                f"{len(ids)} ids of dimension {self._dimension}"
            )
        hashes = b"".join(text_hashes)
        if len(hashes) != TEXT_HASH_BYTES * len(ids):
            raise StorageError(
                f"{len(text_hashes)} text hashes of {len(hashes)} bytes in all for {len(ids)} "
                f"ids: each must be {TEXT_HASH_BYTES} bytes"
            )
        encoded = [encode_id(i) for i in ids]
        kinds: dict[str, int] = {}
        kind_codes = np.fromiter(
            (kinds.setdefault(kind, len(kinds)) for _, kind in encoded), np.int8, len(ids)
        )
        first_row = np.zeros(len(ids), np.int8)
        flat = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1)
        stamp = int(at.timestamp() * 1000)
        return pa.record_batch(
            [
                _strings([text for text, _ in encoded]),
                pa.DictionaryArray.from_arrays(_fixed(pa.int8(), kind_codes), _strings(kinds)),
                pa.FixedSizeListArray.from_arrays(_fixed(pa.float32(), flat), self._dimension),
                pa.DictionaryArray.from_arrays(
                    _fixed(pa.int8(), first_row), _strings([self._model])
                ),
                pa.DictionaryArray.from_arrays(
                    _fixed(pa.int8(), first_row), _strings([self._model_sha])
                ),
                _fixed(pa.binary(TEXT_HASH_BYTES), hashes, len(ids)),
                _fixed(pa.timestamp("ms", tz="UTC"), np.full(len(ids), stamp, np.int64)),
                pa.nulls(len(ids), pa.int64())
                if claim_seqs is None
                else _fixed(pa.int64(), np.asarray(claim_seqs, np.int64)),
            ],
            schema=self._schema,
        )

    @property
    def room(self) -> int:
        """Rows the open shard takes before it is due."""
        return max(0, self.settings.max_rows - self.rows)

    def due(self) -> bool:
        if self.rows == 0:
            return False
        return (
            self.rows >= self.settings.max_rows
            or time.monotonic() - self.opened_at >= self.settings.max_age_s
        )

    def seconds_until_due(self) -> float:
        if self.rows == 0:
            return self.settings.max_age_s
        return max(0.0, self.opened_at + self.settings.max_age_s - time.monotonic())

    def roll(self) -> ShardReceipt | None:
        """Close the open shard and make it durable in cold storage; None when empty."""
        if self._writer is None or self._hot_path is None:
            return None
        try:
            self._flush_pending()
            self._writer.close()
            storage.fsync_file(self._hot_path)
            name = self._hot_path.name.removeprefix(".").removesuffix(".tmp")
            size = self._hot_path.stat().st_size
            self._publish(self._hot_path, name)
        except (OSError, pa.ArrowException) as exc:
            self.abandon()
            raise StorageError(f"writing shard to {self.settings.cold_uri}: {exc}") from exc
        receipt = ShardReceipt(name, self.rows, size)
        self._reset()
        return receipt

    def abandon(self) -> None:
        """Drop the open shard (its docs stay unmarked, so they will be redone)."""
        if self._writer is not None:
            with contextlib.suppress(OSError, pa.ArrowException):
                self._writer.close()
        if self._hot_path is not None:
            self._hot_path.unlink(missing_ok=True)
        self._reset()

    def _open(self) -> None:
        self._seq += 1
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        name = f"{self.settings.prefix}-{stamp}-{self._owner}-{self._seq:06d}{SHARD_SUFFIX}"
        self._hot_path = self._hot / f".{name}.tmp"
        try:
            self._writer = pq.ParquetWriter(str(self._hot_path), self._schema, **PARQUET_OPTIONS)
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(f"cannot create a shard in {self._hot}: {exc}") from exc
        self.opened_at = time.monotonic()

    def _flush_pending(self) -> None:
        if self._pending and self._writer is not None:
            self._writer.write_table(
                pa.Table.from_batches(self._pending, self._schema),
                row_group_size=_ROW_GROUP_ROWS * 2,
            )
            self._pending, self._pending_rows = [], 0

    def _publish(self, hot_path: Path, name: str) -> None:
        storage.publish_file(self._cold_fs, hot_path, f"{self._cold_root}/{name}")

    def _reset(self) -> None:
        self._writer, self._hot_path = None, None
        self._pending, self._pending_rows, self.rows = [], 0, 0


# Columns are built from their buffers, not with ``pa.array``: that call first looks whether its
# input is a pandas object, importing pandas (a second or more) in every worker that never uses
# it, in the middle of its first shard.


def _fixed(kind: pa.DataType, values: np.ndarray | bytes, length: int | None = None) -> pa.Array:
    """A column of fixed-width values (numbers, times, fixed-size binary) without nulls."""
    count = len(values) if length is None else length
    return pa.Array.from_buffers(kind, count, [None, pa.py_buffer(values)])


def _strings(values: Sequence[str] | dict[str, int]) -> pa.Array:
    """A string column without nulls."""
    encoded = [value.encode() for value in values]
    offsets = np.zeros(len(encoded) + 1, np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    data = b"".join(encoded)
    return pa.Array.from_buffers(
        pa.string(), len(encoded), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _own_hot_dir(root: Path, owner: str) -> Path:
    """A hot directory per worker process; leftovers of dead workers on this host are removed.

    Their shards were never published, so their docs were never marked and will be redone.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the hot directory {root}: {exc}") from exc
    host = socket.gethostname()
    for stale in root.glob(f"{host}-*"):
        pid = stale.name.rsplit("-", 2)[-2] if stale.name.count("-") >= 2 else ""
        if pid.isdigit() and not storage.process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    mine = root / f"{host}-{os.getpid()}-{owner[:8]}"
    mine.mkdir(parents=True, exist_ok=True)
    return mine

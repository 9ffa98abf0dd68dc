"""Vectors already made, by text hash, for one embed key: a bounded SQLite file on the hot tier.

Across runs (and across workers on one host: SQLite's WAL lets them share the file) a text
embedded once is not sent to the fleet again. The cache is only an accelerator: the shards are
the record. A lost or damaged cache file is rebuilt from the shards of the same embed key,
newest first; a cache past ``max_rows`` forgets its oldest entries.

Blocking, but for ``store_soon``: call from a worker thread. One connection, guarded by a
lock; stores made with ``store_soon`` run in the cache's own writer thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from embedder.errors import ConfigurationError, StorageError
from embedder.identity import same_vector
from embedder.storage import filesystems as storage
from embedder.storage.schema import ShardMetadata

log = logging.getLogger(__name__)

_LOOKUP_CHUNK = 500  # keys per query, well under SQLite's variable limit
_QUEUED_STORES = 4  # batches of vectors waiting for the cache's writer thread
_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (seq INTEGER PRIMARY KEY, hash BLOB UNIQUE NOT NULL,
                                    vector BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS about (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class VectorCache:
    def __init__(
        self,
        path: Path,
        *,
        embed_key: str,
        dimension: int,
        max_rows: int,
        probe: np.ndarray | None = None,
    ) -> None:
        self.path = path
        self.embed_key = embed_key
        self.dimension = dimension
        self.max_rows = max_rows
        # The fleet's vector for its probe text: where TEI reports nothing that changed (local
        # model files replaced, no --model-revision), a different one is the only sign.
        self.probe = None if probe is None else np.asarray(probe, np.float32)
        # WAL lets lookups read while the writer writes: one connection each, so a lookup on
        # the claim path never waits behind a store.
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vector-cache")
        self._slots = asyncio.Semaphore(_QUEUED_STORES)
        self._writes: set[asyncio.Future[None]] = set()
        self.fresh = not path.exists()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._connect()
            self._reader = self._connect()
        except sqlite3.DatabaseError as exc:
            log.warning("vector cache %s is unusable (%s); starting it again", path, exc)
            path.unlink(missing_ok=True)
            self.fresh = True
            self._db = self._connect()
            self._reader = self._connect()
        except OSError as exc:
            raise StorageError(f"cannot open the vector cache {path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        # Vectors are kilobytes: large pages keep each in one page (twice the write speed of
        # the default 4 KiB). Takes effect only on a new file, before WAL is switched on.
        db.execute("PRAGMA page_size=16384")
        db.execute("PRAGMA journal_mode=WAL")
        # A crash may lose the last writes: the cache is rebuilt or refilled, never trusted
        # for more than the vectors it holds.
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        stored = dict(db.execute("SELECT name, value FROM about").fetchall())
        expected = {"embed_key": self.embed_key, "dimension": str(self.dimension)}
        probe = stored.pop("probe", None)
        if stored and stored != expected:
            raise sqlite3.DatabaseError(f"it holds {stored}, this run needs {expected}")
        self._check_probe(probe)
        if self.probe is not None:
            expected["probe"] = self.probe.tobytes().hex()
        db.executemany("INSERT OR IGNORE INTO about VALUES (?, ?)", expected.items())
        db.commit()
        return db

    def _check_probe(self, stored: str | None) -> None:
        if stored is None or self.probe is None:
            return
        cached = np.frombuffer(bytes.fromhex(stored), dtype=np.float32)
        if not same_vector(cached, self.probe):
            raise ConfigurationError(
                f"the fleet answers other vectors than the ones cached in {self.path} under the "
                f"same embed key {self.embed_key}: the model (or its files) changed while /info "
                "reports the same. Name the new revision with --model-revision"
            )

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()

    async def store_soon(self, hashes: Sequence[bytes], vectors: np.ndarray) -> None:
        """Store in the cache's own thread, off the caller's path; waits only when several
        stores are already queued (the cache falls behind rather than memory growing)."""
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._writer, self._store_logged, list(hashes), vectors)
        self._writes.add(future)
        future.add_done_callback(self._written)

    def _written(self, future: asyncio.Future[None]) -> None:
        self._writes.discard(future)
        self._slots.release()

    def _store_logged(self, hashes: list[bytes], vectors: np.ndarray) -> None:
        try:
            self.store(hashes, vectors)
        except sqlite3.Error as exc:  # an accelerator: a failed store only costs re-embedding
            log.warning(
                "vector cache %s: storing %d vectors failed: %s", self.path, len(hashes), exc
            )

    async def aclose(self) -> None:
        """Finish the queued stores, then close."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        self._writer.shutdown(wait=True)
        self.close()

    def __len__(self) -> int:
        with self._read_lock:
            (count,) = self._reader.execute("SELECT count(*) FROM vectors").fetchone()
        return int(count)

    def lookup(self, hashes: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        unique = list(dict.fromkeys(hashes))
        with self._read_lock:
            for start in range(0, len(unique), _LOOKUP_CHUNK):
                chunk = unique[start : start + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._reader.execute(
                    f"SELECT hash, vector FROM vectors WHERE hash IN ({marks})",
                    chunk,
                )
                for key, blob in rows:
                    vector = np.frombuffer(blob, dtype=np.float32)
                    if vector.shape == (self.dimension,):
                        found[bytes(key)] = vector
        return found

    def store(self, hashes: Sequence[bytes], vectors: np.ndarray) -> None:
        if not hashes:
            return
        rows = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._lock:
            self._db.executemany(
                "INSERT OR IGNORE INTO vectors (hash, vector) VALUES (?, ?)",
                ((h, rows[i].tobytes()) for i, h in enumerate(hashes)),
            )
            self._db.execute(
                "DELETE FROM vectors WHERE seq <= (SELECT max(seq) FROM vectors) - ?",
                (self.max_rows,),
            )
            self._db.commit()

    def rebuild(self, shards_uri: str, filesystem: pafs.FileSystem | None = None) -> int:
        """Fill a new cache from the shards of this embed key, newest first; rows added.

        Rebuilt rows take sequence numbers below zero, older ones lower, so that the
        oldest are the first forgotten when the cache is full.
        """
        fs, root = storage.open_root(shards_uri, create=False, filesystem=filesystem)
        added = 0
        for info in reversed(storage.list_parquet(fs, root)):
            if added >= self.max_rows:
                break
            try:
                with fs.open_input_file(info.path) as handle:
                    parquet = pq.ParquetFile(handle)
                    if ShardMetadata.from_schema(parquet.schema_arrow).embed_key != self.embed_key:
                        continue
                    table = parquet.read(columns=["text_hash", "embedding"])
            except (OSError, pa.ArrowException, KeyError) as exc:
                log.warning("vector cache: skipping shard %s (%s)", info.path, exc)
                continue
            hashes = table.column("text_hash").to_pylist()[::-1]
            flat = table.column("embedding").combine_chunks().flatten()
            vectors = flat.to_numpy(zero_copy_only=False).reshape(-1, self.dimension)[::-1]
            take = min(len(hashes), self.max_rows - added)
            with self._lock:
                self._db.executemany(
                    "INSERT OR IGNORE INTO vectors (seq, hash, vector) VALUES (?, ?, ?)",
                    (
                        (
                            -(added + i + 1),
                            bytes(hashes[i]),
                            vectors[i].astype(np.float32).tobytes(),
                        )
                        for i in range(take)
                    ),
                )
                self._db.commit()
            added += take
        return added

"""A float32 matrix on local disk: a NumPy ``.npy`` written through a memory map, and the
pickle (``{"ids": [...], "embeddings": matrix}``) written from it, both in bounded memory.

Rows land anywhere in the matrix (the output's rows are not in corpus order), so the map is
reopened every few hundred megabytes of writes: pages already written go back to the page
cache instead of piling up in the process's resident memory. Both files are written under a
temporary name beside their final one and renamed only when complete, so a crash never leaves
a file that looks finished.
"""

from __future__ import annotations

import mmap
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from embedder.errors import StorageError

DTYPE = np.dtype("<f4")
_PAGE = mmap.PAGESIZE
# Bytes of pages a map may hold dirty (or read) before it is flushed and dropped.
DEFAULT_WINDOW_BYTES = 64 << 20


def staging_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


class MatrixWriter:
    """Rows of a ``(rows, dimension)`` float32 ``.npy``, written in any order."""

    def __init__(
        self, path: Path, rows: int, dimension: int, *, window_bytes: int = DEFAULT_WINDOW_BYTES
    ) -> None:
        self.path = path
        self.shape = (rows, dimension)
        self._staging = staging_path(path)
        # Rows a map takes before it is dropped: a row smaller than a page still dirties one.
        self._window_rows = max(1, window_bytes // max(dimension * DTYPE.itemsize, _PAGE))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            created = npy_format.open_memmap(
                self._staging, mode="w+", dtype=DTYPE, shape=self.shape
            )
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot create {self._staging}: {exc}") from exc
        self._map: np.memmap[Any, np.dtype[np.float32]] | None = created
        self._since_reopen = 0

    def put(self, targets: np.ndarray, vectors: np.ndarray) -> None:
        """Write ``vectors[i]`` to row ``targets[i]``."""
        if not len(targets):
            return
        matrix = self._open()
        matrix[targets] = vectors
        self._since_reopen += len(targets)
        if self._since_reopen >= self._window_rows:
            self._drop()

    def fill(self, targets: np.ndarray, value: float) -> None:
        """Set whole rows to ``value`` (NaN marks a row the output does not hold)."""
        self.put(targets, np.full((len(targets), self.shape[1]), value, DTYPE))

    def finish(self) -> None:
        """Flush, fsync and give the file its final name."""
        self._drop()
        try:
            with self._staging.open("rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(self._staging, self.path)
        except OSError as exc:
            raise StorageError(f"cannot finish {self.path}: {exc}") from exc

    def abandon(self) -> None:
        self._map = None
        self._staging.unlink(missing_ok=True)

    def _open(self) -> np.memmap[Any, np.dtype[np.float32]]:
        if self._map is None:
            self._map = npy_format.open_memmap(self._staging, mode="r+")
        return self._map

    def _drop(self) -> None:
        if self._map is not None:
            self._map.flush()
            self._map = None  # unmapped once the last reference goes
        self._since_reopen = 0


def npy_data_offset(path: Path) -> tuple[int, tuple[int, ...], np.dtype[Any]]:
    """Where the data of an ``.npy`` starts, and the shape and dtype its header declares."""
    with path.open("rb") as handle:
        version = npy_format.read_magic(handle)
        read = (
            npy_format.read_array_header_1_0
            if version == (1, 0)
            else npy_format.read_array_header_2_0
        )
        shape, _fortran, dtype = read(handle)
        return handle.tell(), shape, dtype


def write_pickle(
    npy_path: Path,
    pickle_path: Path,
    ids: Sequence[Any],
    *,
    window_bytes: int = DEFAULT_WINDOW_BYTES,
) -> None:
    """``{"ids": ids, "embeddings": matrix}`` pickled from the ``.npy`` at ``npy_path``.

    The matrix goes into the pickle straight from a map of the ``.npy`` (protocol 5 writes a
    buffer without copying it), and the pages already written are dropped as it goes, so the
    matrix is never held in memory; the ids list is (a pickle holds Python objects).
    """
    offset, shape, dtype = npy_data_offset(npy_path)
    staging = staging_path(pickle_path)
    try:
        with npy_path.open("rb") as source, staging.open("wb") as sink:
            size = int(np.prod(shape)) * dtype.itemsize
            if size == 0:
                matrix = np.zeros(shape, DTYPE)
                pickle.dump({"ids": list(ids), "embeddings": matrix}, sink, protocol=5)
            else:
                # A private (copy-on-write) map: the array is writable, so the pickle holds a
                # bytearray and the unpickled matrix is writable too, as the seed's was.
                mapped = mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_COPY)
                try:
                    matrix = np.frombuffer(mapped, dtype, int(np.prod(shape)), offset).reshape(
                        shape
                    )
                    body = {"ids": list(ids), "embeddings": matrix}
                    pickle.dump(body, _Dropping(sink, mapped, offset, window_bytes), protocol=5)
                    del matrix, body
                finally:
                    mapped.close()
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(staging, pickle_path)
    except (OSError, pickle.PicklingError, BufferError) as exc:
        staging.unlink(missing_ok=True)
        raise StorageError(f"cannot write {pickle_path}: {exc}") from exc


class _Dropping:
    """A file's ``write`` that cuts large buffers into windows and, after each, tells the
    kernel the mapped pages behind it are no longer needed (they stay in the page cache)."""

    def __init__(self, sink: BinaryIO, mapped: mmap.mmap, offset: int, window: int) -> None:
        self._sink = sink
        self._mapped = mapped
        self._offset = offset  # where the matrix starts in the map
        self._dropped = offset - offset % _PAGE  # pages before this one are dropped
        self._window = max(_PAGE, window - window % _PAGE)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if len(view) < self._window:
            return self._sink.write(view)
        for start in range(0, len(view), self._window):
            self._sink.write(view[start : start + self._window])
            self._drop_through(start + self._window)
        return len(view)

    def _drop_through(self, written: int) -> None:
        # The matrix is the only large buffer in the pickle and is written front to back.
        end = min(len(self._mapped), self._offset + written)
        end -= end % _PAGE
        if end > self._dropped and hasattr(mmap, "MADV_DONTNEED"):
            self._mapped.madvise(mmap.MADV_DONTNEED, self._dropped, end - self._dropped)
            self._dropped = end

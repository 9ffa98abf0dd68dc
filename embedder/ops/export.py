"""``embedder export``: the consolidated output as one matrix in corpus order, checked.

Writes a NumPy ``.npy`` (through a memory map) and/or a pickle of ``{"ids": [...],
"embeddings": float32 matrix}`` (written from the ``.npy``), then checks what users of the
seed's pickles check: every row present (naming the missing), the shape, every norm within a
tolerance of 1.0 and the file's size (the ``.npy`` header plus rows x dimension x 4 bytes). A
row the output lacks is NaN in the matrix and ``None`` in the ids, and fails the export.

Memory stays bounded whatever the output's size: the output is streamed a record batch at a
time, the order is worked out in an on-disk DuckDB database (``export_order``), and the
matrix is written through a map that is dropped every 64 MB written. Only the
pickle's ids list is held whole (a pickle is loaded whole anyway).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from embedder.errors import ConfigurationError, EmbedderError, StorageError
from embedder.files.chunk_marks import Failure
from embedder.files.consolidate_outputs import FAILURES_FILE, find_outputs
from embedder.files.plan import ChunkPlan
from embedder.files.plan_store import load_plan
from embedder.files.runner import corpus_key
from embedder.ops.export_order import (
    SAMPLE,
    CorpusOrder,
    OrderBy,
    corpus_rows,
    ids_file_rows,
)
from embedder.ops.export_report import CORPUS_ORDER, IDS_FILE_ORDER, ExportReport
from embedder.ops.matrix_file import DTYPE, MatrixWriter, npy_data_offset, write_pickle
from embedder.ops.verify import Finding
from embedder.storage import filesystems as storage
from embedder.storage import manifest as mf
from embedder.storage.workdb import open_work_db

log = logging.getLogger(__name__)

_READ_ROWS = 16_384  # rows of keys a batch
_READ_BYTES = 16 << 20  # of vectors a batch


class CannotExportError(EmbedderError):
    """Nothing to export: no output, or one whose files cannot be read as one matrix."""


@dataclass(frozen=True, slots=True)
class ExportSettings:
    consolidated_uri: str
    npy: Path | None = None
    pickle: Path | None = None
    # None: a file corpus's order (from its plan), else by _id.
    order_by: OrderBy | None = None
    ids_file: Path | None = None
    # A file corpus's embed-files output (or the parent of its parts), whose plan gives the
    # corpus order; None: the consolidated directory's parent, when it is one.
    corpus_uri: str | None = None
    expect_rows: int | None = None
    norm_tolerance: float = 1e-3
    memory_limit_bytes: int = 512 << 20
    work_dir: Path | None = None
    filesystem: pafs.FileSystem | None = None

    def __post_init__(self) -> None:
        if self.npy is None and self.pickle is None:
            raise ConfigurationError("name an .npy file, a pickle file or both to write")
        if self.ids_file is not None and (self.order_by or self.corpus_uri):
            raise ConfigurationError("an ids file gives the order: not also --order-by or --corpus")
        if self.corpus_uri is not None and self.order_by is OrderBy.ID:
            raise ConfigurationError("--corpus gives the corpus order: not also --order-by id")
        if self.expect_rows is not None and self.expect_rows < 0:
            raise ConfigurationError("the expected number of rows cannot be negative")
        if self.norm_tolerance <= 0:
            raise ConfigurationError("the norm tolerance must be positive")


def export(settings: ExportSettings) -> ExportReport:
    """Raises ``EmbedderError`` when nothing could be exported (no output, unreadable files)."""
    started = time.monotonic()
    fs, root = storage.open_root(
        settings.consolidated_uri, create=False, filesystem=settings.filesystem
    )
    manifest = _manifest(fs, root, settings.consolidated_uri)
    paths = [f"{root}/{f.name}" for f in manifest.files]
    dimension = _dimension(fs, paths, manifest)
    plan = _plan(settings, manifest)
    order_by, order_name, wanted = _order(settings, plan, manifest)
    report = ExportReport(
        settings.consolidated_uri,
        order=order_name,
        npy=str(settings.npy) if settings.npy else None,
        pickle=str(settings.pickle) if settings.pickle else None,
        model_id=manifest.model_id,
        normalized=manifest.normalized is not False,
        norm_tolerance=settings.norm_tolerance,
    )
    with tempfile.TemporaryDirectory(prefix="export-", dir=settings.work_dir) as tmp:
        con = open_work_db(Path(tmp), settings.memory_limit_bytes)
        try:
            order = CorpusOrder(
                con,
                order_by,
                expect_rows=settings.expect_rows,
                wanted=wanted,
                bad=_failures(fs, root),
            )
            report.output_rows = _read_keys(fs, paths, order)
            report.placement = order.place()
            npy = settings.npy or Path(tmp) / "matrix.npy"
            _write_matrix(fs, paths, order, report, npy=npy, dimension=dimension)
            _check_file(npy, report, dimension, settings.expect_rows)
            if settings.pickle is not None:
                log.info("export: writing the pickle %s", settings.pickle)
                write_pickle(npy, settings.pickle, order.ids(report.placement.rows))
        except duckdb.Error as exc:
            raise StorageError(f"the work database in {tmp} failed: {exc}") from exc
        finally:
            con.close()
    report.elapsed_s = round(time.monotonic() - started, 2)
    return report


def _manifest(fs: pafs.FileSystem, root: str, uri: str) -> mf.Manifest:
    if not storage.exists(fs, f"{root}/{mf.MANIFEST_NAME}"):
        raise CannotExportError(
            f"no output at {uri} (no {mf.MANIFEST_NAME}): run consolidate first"
        )
    try:
        return mf.load(fs, root)
    except (ValueError, TypeError) as exc:
        raise StorageError(f"{root}/{mf.MANIFEST_NAME} is unreadable: {exc}") from exc


def _dimension(fs: pafs.FileSystem, paths: list[str], manifest: mf.Manifest) -> int:
    dimensions: set[int] = set()
    for path in paths:
        kind = _open(fs, path).schema_arrow.field("embedding").type
        if not pa.types.is_fixed_size_list(kind) or kind.value_type != pa.float32():
            raise CannotExportError(f"{path}: embedding column is {kind}, not float32 vectors")
        dimensions.add(kind.list_size)
    if manifest.dimension is not None:
        dimensions.add(manifest.dimension)
    if len(dimensions) != 1:
        raise CannotExportError(
            "the output holds no vectors"
            if not dimensions
            else f"several dimensions: {sorted(dimensions)}"
        )
    return dimensions.pop()


def _plan(settings: ExportSettings, manifest: mf.Manifest) -> ChunkPlan | None:
    """The file corpus's plan: of ``--corpus``, or of the consolidated directory's parent
    (``embedder consolidate --output-dir``'s default place for it) when the output holds
    that corpus's rows."""
    if settings.ids_file is not None or settings.order_by is OrderBy.ID:
        return None
    uri = settings.corpus_uri or _parent(settings.consolidated_uri)
    if uri is None:
        return None
    try:
        outputs = find_outputs([uri])
    except ConfigurationError:
        if settings.corpus_uri is None:
            return None  # not a file corpus's output: ordered by _id
        raise
    plan = load_plan(outputs[0])
    if manifest.queue and manifest.queue != corpus_key(plan):
        if settings.corpus_uri is None:
            return None  # a neighbour, not this output's corpus
        raise ConfigurationError(
            f"{settings.consolidated_uri} holds the rows of {manifest.queue}, not of the "
            f"corpus embedded into {uri} ({corpus_key(plan)})"
        )
    return plan


def _parent(uri: str) -> str | None:
    parent = uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri.rstrip("/") else None
    return parent if parent and not parent.endswith(":/") else None


def _order(
    settings: ExportSettings, plan: ChunkPlan | None, manifest: mf.Manifest
) -> tuple[OrderBy, str, Iterable[pa.RecordBatch]]:
    """How rows are ordered: the order's kind, its name, and the ids it lists (if any)."""
    if settings.ids_file is not None:
        return OrderBy.LISTED, IDS_FILE_ORDER, ids_file_rows(settings.ids_file)
    if plan is not None:
        return OrderBy.LISTED, CORPUS_ORDER, corpus_rows(plan)
    if settings.order_by is not None:
        return settings.order_by, settings.order_by.value, ()
    # A file corpus's output without its plan at hand: ids are positions unless an id
    # field gave them (then the rows find no place, and the report says to give --corpus).
    files = (manifest.queue or "").startswith("files:")
    order_by = OrderBy.POSITION if files else OrderBy.ID
    return order_by, order_by.value, ()


def _failures(fs: pafs.FileSystem, root: str) -> Iterator[Failure]:
    """A file corpus's bad records, listed beside its consolidated output."""
    path = f"{root}/{FAILURES_FILE}"
    if not storage.exists(fs, path):
        return
    try:
        raw = storage.read_bytes(fs, path)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot read {path}: {exc}") from exc
    for line in raw.splitlines():
        if line.strip():
            yield Failure.from_line(line)


def _open(fs: pafs.FileSystem, path: str) -> pq.ParquetFile:
    try:
        # Pages read as they are decoded through a small buffer, not a whole column chunk
        # at once: the consolidator writes row groups of 128 MiB.
        return pq.ParquetFile(fs.open_input_file(path), pre_buffer=False, buffer_size=_READ_BYTES)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot read output file {path}: {exc}") from exc


def _batches(
    fs: pafs.FileSystem, path: str, columns: list[str], rows: int = _READ_ROWS
) -> Iterator[pa.RecordBatch]:
    parquet = _open(fs, path)
    try:
        yield from parquet.iter_batches(batch_size=rows, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot read output file {path}: {exc}") from exc
    finally:
        parquet.close()


def _read_keys(fs: pafs.FileSystem, paths: list[str], order: CorpusOrder) -> int:
    rows = 0
    for file, path in enumerate(paths):
        first = 0
        for batch in _batches(fs, path, ["_id", "_id_kind"]):
            order.add_keys(file, first, batch)
            first += batch.num_rows
        rows += first
    return rows


def _write_matrix(
    fs: pafs.FileSystem,
    paths: list[str],
    order: CorpusOrder,
    report: ExportReport,
    *,
    npy: Path,
    dimension: int,
) -> None:
    """Every row's vector to its place, checked on the way; unfilled rows are NaN."""
    rows = report.placement.rows
    log.info("export: writing %s rows x %s to %s", rows, dimension, npy)
    writer = MatrixWriter(npy, rows, dimension)
    try:
        places = _Places(order)
        for file, path in enumerate(paths):
            rows_a_batch = max(256, _READ_BYTES // (dimension * DTYPE.itemsize))
            for batch in _batches(fs, path, ["_id", "embedding"], rows_a_batch):
                targets = places.take(file, batch.num_rows)
                vectors = np.asarray(batch.column("embedding").flatten()).reshape(-1, dimension)
                _check_vectors(batch, vectors, targets, report)
                placed = targets >= 0
                if placed.all():
                    writer.put(targets, vectors)
                else:
                    writer.put(targets[placed], vectors[placed])
        places.finish()
        for unfilled in order.unfilled(rows):
            writer.fill(unfilled, np.nan)
        writer.finish()
    except BaseException:
        writer.abandon()
        raise


class _Places:
    """The order's targets, taken a batch at a time in step with the output's batches."""

    def __init__(self, order: CorpusOrder) -> None:
        self._stream = order.targets()
        self._file = -1
        self._left = np.empty(0, np.int64)

    def take(self, file: int, n: int) -> np.ndarray:
        parts: list[np.ndarray] = []
        while n:
            if not len(self._left):
                self._file, self._left = next(self._stream)
            if self._file != file:
                raise StorageError(f"output file {file} changed while it was exported")
            part, self._left = self._left[:n], self._left[n:]
            parts.append(part)
            n -= len(part)
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def finish(self) -> None:
        """Read the stream to its end (the work database serves one result at a time)."""
        if len(self._left) or next(self._stream, None) is not None:
            raise StorageError("the output holds more rows than when it was read")


def _check_vectors(
    batch: pa.RecordBatch, vectors: np.ndarray, targets: np.ndarray, report: ExportReport
) -> None:
    # Norms first: a row holding NaN or infinity has a norm that is not finite, so only
    # those rows need a closer look.
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))
    finite = np.isfinite(norms)
    if not finite.all():
        finite[~finite] = np.isfinite(vectors[~finite]).all(axis=1)
    _note(report.nonfinite, batch, np.flatnonzero(~finite), targets, None)
    if not report.normalized:
        return
    off = np.flatnonzero(finite & (np.abs(norms - 1.0) > report.norm_tolerance))
    _note(report.off_norm, batch, off, targets, norms)


def _note(
    finding: Finding,
    batch: pa.RecordBatch,
    rows: np.ndarray,
    targets: np.ndarray,
    norms: np.ndarray | None,
) -> None:
    finding.count += len(rows)
    ids = batch.column("_id")
    for row in rows[: max(0, SAMPLE - len(finding.sample))].tolist():
        text = f"id {ids[row].as_py()} at row {targets[row]}"
        finding.sample.append(text + (f" (norm {norms[row]:.4f})" if norms is not None else ""))


def _check_file(npy: Path, report: ExportReport, dimension: int, expect_rows: int | None) -> None:
    """The shape and dtype the written file's header declares, and its size."""
    expected_rows = expect_rows if expect_rows is not None else report.placement.expected_rows
    report.expected_shape = (
        expected_rows if expected_rows is not None else report.placement.rows,
        dimension,
    )
    offset, shape, dtype = npy_data_offset(npy)
    if dtype != DTYPE or len(shape) != 2:
        raise StorageError(f"{npy} holds {dtype} of shape {shape}, not a float32 matrix")
    report.shape = (int(shape[0]), int(shape[1]))
    report.file_size = npy.stat().st_size
    report.expected_file_size = offset + report.shape[0] * report.shape[1] * DTYPE.itemsize

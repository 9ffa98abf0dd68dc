"""Merging many small shards into a few large, verified, de-duplicated Parquet files.

A run: take the complete shards not yet consolidated; find, among them and the existing
output, the rows that lose to a newer row of the same ``_id`` (``dedup``); copy the shards,
and any older output file that holds a loser, into new files of about the target size,
checking every vector on the way; verify the counts; then commit. The commit is a record
written atomically before anything visible changes and applied idempotently, so a run
killed at any point is finished (or cleanly forgotten) by the next one. Shards are retired
only after their rows are in verified output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from embedder import manifest as mf
from embedder import storage
from embedder.dedup import find_losers
from embedder.errors import ConfigurationError, StorageError
from embedder.failpoints import failpoint
from embedder.shards import PARQUET_OPTIONS

log = logging.getLogger(__name__)

_COMMIT_PREFIX = ".commit-"
_STAGING_PREFIX = ".staging-"
_RETIRED_DIR = ".retired"
_ROW_GROUP_BYTES = 128 << 20


@dataclass(frozen=True, slots=True)
class ConsolidateSettings:
    shards_uri: str
    output_uri: str
    target_file_bytes: int = 1 << 30
    memory_limit_bytes: int = 512 << 20
    retire: Literal["delete", "move"] = "delete"
    work_dir: Path | None = None  # local scratch for the de-duplication's spill files
    norm_tolerance: float = 1e-3
    shards_filesystem: pafs.FileSystem | None = None  # configured pyarrow.fs instances, if any
    output_filesystem: pafs.FileSystem | None = None

    def __post_init__(self) -> None:
        if self.shards_uri.rstrip("/") == self.output_uri.rstrip("/"):
            raise ConfigurationError(
                "the consolidated directory must differ from the shards directory"
            )
        if self.target_file_bytes < 16 << 10 or self.memory_limit_bytes < 64 << 20:
            raise ConfigurationError(
                "the target file size must be >= 16 KiB and the memory limit >= 64 MiB"
            )


@dataclass
class Report:
    run_id: str
    sources: list[str] = field(default_factory=list)
    rows_in: int = 0
    rows_out: int = 0
    duplicates_dropped: int = 0
    files: list[mf.OutputFile] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)
    bad_shards: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class _Source:
    """One input of a run: a new shard or an existing output file."""

    name: str
    path: str
    fs: pafs.FileSystem
    rows: int
    bytes: int
    is_shard: bool


class _BadSource(Exception):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class Consolidator:
    def __init__(self, settings: ConsolidateSettings) -> None:
        self.settings = settings
        self.fs_in, self.root_in = storage.open_root(
            settings.shards_uri, filesystem=settings.shards_filesystem
        )
        self.fs_out, self.root_out = storage.open_root(
            settings.output_uri, filesystem=settings.output_filesystem
        )

    def run(self) -> Report:
        started = time.monotonic()
        self.recover()
        manifest = mf.load(self.fs_out, self.root_out)
        report = Report(run_id=_run_id())
        shards = [
            i
            for i in storage.list_parquet(self.fs_in, self.root_in)
            if i.base_name not in manifest.consumed()
        ]
        while shards:
            usable = self._check_shards(shards, manifest, report.bad_shards)
            if not usable:
                break
            try:
                self._consolidate(usable, manifest, report)
                break
            except _BadSource as bad:
                # A shard failed while being copied: forget this attempt, leave the shard in
                # place, and consolidate the others.
                log.error("shard %s is unreadable (%s); leaving it in place", bad.name, bad.reason)
                report.bad_shards[bad.name] = bad.reason
                self._discard_staging()
                shards = [s for s in shards if s.base_name not in report.bad_shards]
        report.elapsed_s = round(time.monotonic() - started, 3)
        return report

    # --- one attempt -------------------------------------------------------------------------

    def _consolidate(self, shards: list[_Source], manifest: mf.Manifest, report: Report) -> None:
        outputs = [
            _Source(
                f.name, f"{self.root_out}/{f.name}", self.fs_out, f.rows, f.bytes, is_shard=False
            )
            for f in manifest.files
        ]
        inputs = outputs + shards
        work = self.settings.work_dir or Path(tempfile.gettempdir())
        losers = find_losers(
            [(s.fs, s.path) for s in inputs],
            memory_limit=self.settings.memory_limit_bytes // 2,
            work_dir=work,
        )
        for index, reason in losers.unreadable.items():
            source = inputs[index]
            if not source.is_shard:
                raise StorageError(f"consolidated file {source.name} is unreadable: {reason}")
            raise _BadSource(source.name, reason)
        to_copy = [(i, s) for i, s in enumerate(inputs) if s.is_shard or i in losers.rows]
        staging = f"{self.root_out}/{_STAGING_PREFIX}{report.run_id}"
        self.fs_out.create_dir(staging, recursive=True)
        schema = _read_schema(shards[0])
        dimension = schema.field("embedding").type.list_size
        normalized = manifest.normalized if manifest.normalized is not None else _normalized(schema)
        # Inputs are written with the same encoding as the output, so their bytes per row
        # predict the output's and files come out near the target size.
        row_bytes = sum(s.bytes for s in inputs) / max(1, sum(s.rows for s in inputs))
        writer = _RollingWriter(
            self.fs_out,
            staging,
            report.run_id,
            schema,
            target_bytes=self.settings.target_file_bytes,
            row_bytes=row_bytes,
        )
        dropped = 0
        for index, source in to_copy:
            drop = losers.rows.get(index, np.empty(0, np.int64))
            dropped += len(drop)
            self._copy(source, drop, writer, dimension, normalized)
            failpoint("consolidate.mid-copy")
        written = writer.close()
        report.sources = [s.name for s in shards]
        report.rewritten = [s.name for _, s in to_copy if not s.is_shard]
        report.rows_in = sum(s.rows for _, s in to_copy)
        report.duplicates_dropped = dropped
        report.files = [
            self._verify_file(staging, name, rows, sources) for name, rows, sources in written
        ]
        report.rows_out = sum(f.rows for f in report.files)
        if report.rows_in != report.rows_out + report.duplicates_dropped:
            raise StorageError(
                f"row counts do not add up: {report.rows_in} in, {report.rows_out} out, "
                f"{report.duplicates_dropped} duplicates dropped; nothing was changed"
            )
        updated = mf.Manifest(
            model_id=manifest.model_id
            or schema.metadata.get(b"embedder.model_id", b"").decode()
            or None,
            model_sha=manifest.model_sha
            or schema.metadata.get(b"embedder.model_sha", b"").decode()
            or None,
            dimension=dimension,
            normalized=normalized,
            files=[f for f in manifest.files if f.name not in report.rewritten] + report.files,
            runs=[
                *manifest.runs,
                mf.RunRecord(
                    report.run_id,
                    mf.now_iso(),
                    report.rows_in,
                    report.rows_out,
                    report.duplicates_dropped,
                    report.sources,
                    report.rewritten,
                    dict(report.bad_shards),
                ),
            ],
        )
        record = {
            "run_id": report.run_id,
            "staging": staging,
            "files": [f.name for f in report.files],
            "supersedes": report.rewritten,
            "sources": report.sources,
            "retire": self.settings.retire,
            "manifest": orjson.loads(updated.to_bytes()),
        }
        commit_path = f"{self.root_out}/{_COMMIT_PREFIX}{report.run_id}.json"
        failpoint("consolidate.before-commit")
        storage.write_bytes_atomically(self.fs_out, commit_path, orjson.dumps(record))
        failpoint("consolidate.after-commit-record")
        self._apply(commit_path, record)
        log.info(
            "consolidated %d shards: %d rows in, %d out, %d duplicates dropped, %d files",
            len(report.sources),
            report.rows_in,
            report.rows_out,
            report.duplicates_dropped,
            len(report.files),
        )

    def _copy(
        self,
        source: _Source,
        drop: np.ndarray,
        writer: _RollingWriter,
        dimension: int,
        normalized: bool,
    ) -> None:
        offset = 0
        try:
            with source.fs.open_input_file(source.path) as handle:
                for read in pq.ParquetFile(handle).iter_batches(batch_size=8192):
                    keep = np.ones(read.num_rows, dtype=bool)
                    keep[drop[(drop >= offset) & (drop < offset + read.num_rows)] - offset] = False
                    offset += read.num_rows
                    batch = read if keep.all() else read.filter(pa.array(keep))
                    _check_vectors(
                        batch, dimension, normalized, self.settings.norm_tolerance, source.name
                    )
                    writer.write(batch, source.name)
        except (OSError, pa.ArrowException) as exc:
            if source.is_shard:
                raise _BadSource(source.name, f"{type(exc).__name__}: {exc}") from exc
            raise StorageError(f"consolidated file {source.name} is unreadable: {exc}") from exc
        except _BadSource as bad:
            if source.is_shard:
                raise
            raise StorageError(f"consolidated file {source.name} is damaged: {bad.reason}") from bad

    def _verify_file(self, staging: str, name: str, rows: int, sources: list[str]) -> mf.OutputFile:
        path = f"{staging}/{name}"
        digest = hashlib.sha256()
        size = 0
        with self.fs_out.open_input_stream(path) as stream:
            while chunk := stream.read(8 << 20):
                digest.update(chunk)
                size += len(chunk)
        with self.fs_out.open_input_file(path) as handle:
            footer_rows = pq.ParquetFile(handle).metadata.num_rows
        if footer_rows != rows:
            raise StorageError(f"{name} holds {footer_rows} rows, {rows} were written")
        return mf.OutputFile(name, rows, size, digest.hexdigest(), sources, mf.now_iso())

    # --- checks ----------------------------------------------------------------------------------

    def _check_shards(
        self, infos: list[Any], manifest: mf.Manifest, bad: dict[str, str]
    ) -> list[_Source]:
        usable = []
        reference: tuple[str | None, int | None] = (manifest.model_id, manifest.dimension)
        for info in infos:
            if info.base_name in bad:
                continue
            try:
                with self.fs_in.open_input_file(info.path) as handle:
                    parquet = pq.ParquetFile(handle)
                    schema, rows = parquet.schema_arrow, parquet.metadata.num_rows
            except (OSError, pa.ArrowException) as exc:
                bad[info.base_name] = f"unreadable: {type(exc).__name__}: {exc}"
                continue
            problem = _schema_problem(schema)
            model = (schema.metadata or {}).get(b"embedder.model_id", b"").decode() or None
            dimension = schema.field("embedding").type.list_size if problem is None else None
            if problem is None and reference[0] is not None and (model, dimension) != reference:
                problem = f"made by {model} ({dimension}-d), the output holds {reference[0]} ({reference[1]}-d)"
            if problem:
                bad[info.base_name] = problem
                continue
            reference = (model, dimension)
            usable.append(
                _Source(info.base_name, info.path, self.fs_in, rows, info.size or 0, is_shard=True)
            )
        for name, reason in bad.items():
            log.error("shard %s left in place: %s", name, reason)
        return usable

    # --- commit and recovery --------------------------------------------------------------------

    def recover(self) -> None:
        """Finish a run whose commit record was written; forget any other half-done run."""
        infos = self.fs_out.get_file_info(pafs.FileSelector(self.root_out, allow_not_found=True))
        for info in sorted(infos, key=lambda i: i.base_name):
            if info.base_name.startswith(_COMMIT_PREFIX):
                log.warning("finishing the interrupted consolidation %s", info.base_name)
                self._apply(info.path, orjson.loads(storage.read_bytes(self.fs_out, info.path)))
        self._discard_staging()

    def _apply(self, commit_path: str, record: dict[str, Any]) -> None:
        """Idempotent: every step checks what is already done, so it may run more than once."""
        staging = record["staging"]
        for name in record["files"]:
            staged, final = f"{staging}/{name}", f"{self.root_out}/{name}"
            if storage.exists(self.fs_out, staged):
                storage.move(self.fs_out, staged, final)
            elif not storage.exists(self.fs_out, final):
                raise StorageError(f"commit {commit_path}: {name} is neither staged nor in place")
            failpoint("consolidate.mid-publish")
        for name in record["supersedes"]:
            storage.remove(self.fs_out, f"{self.root_out}/{name}")
        failpoint("consolidate.before-manifest")
        storage.write_bytes_atomically(
            self.fs_out,
            f"{self.root_out}/{mf.MANIFEST_NAME}",
            orjson.dumps(record["manifest"], option=orjson.OPT_INDENT_2),
        )
        for name in record["sources"]:
            self._retire(name, record["retire"])
            failpoint("consolidate.mid-retire")
        storage.remove(self.fs_out, commit_path)
        if storage.exists(self.fs_out, staging):
            self.fs_out.delete_dir(staging)

    def _retire(self, name: str, how: str) -> None:
        path = f"{self.root_in}/{name}"
        if not storage.exists(self.fs_in, path):
            return
        if how == "move":
            self.fs_in.create_dir(f"{self.root_in}/{_RETIRED_DIR}", recursive=True)
            storage.move(self.fs_in, path, f"{self.root_in}/{_RETIRED_DIR}/{name}")
        else:
            self.fs_in.delete_file(path)

    def _discard_staging(self) -> None:
        infos = self.fs_out.get_file_info(pafs.FileSelector(self.root_out, allow_not_found=True))
        for info in infos:
            if info.base_name.startswith(_STAGING_PREFIX) and info.type == pafs.FileType.Directory:
                self.fs_out.delete_dir(info.path)


class _RollingWriter:
    """Output files of about ``target_bytes``, with row groups of about 128 MiB."""

    def __init__(
        self,
        fs: pafs.FileSystem,
        directory: str,
        run_id: str,
        schema: pa.Schema,
        *,
        target_bytes: int,
        row_bytes: float,
    ) -> None:
        self._fs, self._dir, self._run_id, self._schema = fs, directory, run_id, schema
        row_bytes = max(row_bytes, 1.0)
        self._rows_per_file = max(1, int(target_bytes / row_bytes))
        self._rows_per_group = max(1024, int(min(_ROW_GROUP_BYTES, target_bytes) / row_bytes))
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._file_rows = 0
        self._sources: list[str] = []
        self._files: list[tuple[str, int, list[str]]] = []

    def write(self, batch: pa.RecordBatch, source: str) -> None:
        while batch.num_rows:
            if self._writer is None:
                self._open()
            room = self._rows_per_file - self._file_rows - self._pending_rows
            head, batch = batch.slice(0, room), batch.slice(room)
            self._pending.append(head)
            self._pending_rows += head.num_rows
            if not self._sources or self._sources[-1] != source:
                self._sources.append(source)
            if self._pending_rows >= self._rows_per_group:
                self._flush()
            if self._file_rows + self._pending_rows >= self._rows_per_file:
                self._finish()

    def close(self) -> list[tuple[str, int, list[str]]]:
        if self._writer is not None:
            self._finish()
        return self._files

    def _open(self) -> None:
        name = f"part-{self._run_id}-{len(self._files):05d}{storage.PARQUET_SUFFIX}"
        sink = self._fs.open_output_stream(f"{self._dir}/{name}")
        self._writer = pq.ParquetWriter(sink, self._schema, **PARQUET_OPTIONS)
        self._name, self._sink, self._file_rows, self._sources = name, sink, 0, []

    def _flush(self) -> None:
        if self._pending and self._writer is not None:
            self._writer.write_table(pa.Table.from_batches(self._pending, self._schema))
            self._file_rows += self._pending_rows
            self._pending, self._pending_rows = [], 0

    def _finish(self) -> None:
        self._flush()
        assert self._writer is not None
        self._writer.close()
        self._sink.close()
        if storage.is_local(self._fs):
            storage.fsync_file(Path(f"{self._dir}/{self._name}"))
        self._files.append((self._name, self._file_rows, list(dict.fromkeys(self._sources))))
        self._writer = None


def _read_schema(source: _Source) -> pa.Schema:
    with source.fs.open_input_file(source.path) as handle:
        schema: pa.Schema = pq.ParquetFile(handle).schema_arrow
        return schema


def _schema_problem(schema: pa.Schema) -> str | None:
    names = set(schema.names)
    missing = {"_id", "_id_kind", "embedding", "embedded_at"} - names
    if missing:
        return f"not a shard: missing columns {sorted(missing)}"
    kind = schema.field("embedding").type
    if not pa.types.is_fixed_size_list(kind) or kind.value_type != pa.float32():
        return f"embedding column is {kind}, not a fixed-size list of float32"
    return None


def _normalized(schema: pa.Schema) -> bool:
    flag: bytes = (schema.metadata or {}).get(b"embedder.normalize", b"true")
    return flag == b"true"


def _check_vectors(
    batch: pa.RecordBatch, dimension: int, normalized: bool, tolerance: float, source: str
) -> None:
    column = batch.column("embedding")
    if column.null_count:
        raise _BadSource(source, "null vectors")
    values = np.asarray(column.flatten()).reshape(-1, dimension)
    if not np.isfinite(values).all():
        raise _BadSource(source, "vectors hold NaN or infinity")
    if normalized:
        norms = np.linalg.norm(values, axis=1)
        worst = float(np.max(np.abs(norms - 1.0))) if len(norms) else 0.0
        if worst > tolerance:
            raise _BadSource(
                source, f"a vector's norm is off by {worst:.4f} though vectors are normalized"
            )


def _run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]

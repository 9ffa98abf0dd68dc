"""Merging many small shards into a few large, verified, de-duplicated Parquet files.

A run: take the complete shards not yet consolidated; find, among them and the existing
output, the rows that lose to a newer row of the same ``_id`` (``dedup``); copy the shards,
and any older output file that holds a loser, into new files of about the target size,
checking every vector on the way; verify the counts; then commit. The commit is a record
written atomically before anything visible changes and applied idempotently, so a run
killed at any point is finished (or cleanly forgotten) by the next one. Shards are retired
only after their rows are in verified output.

One consolidator commits to an output at a time: a run holds the output's lease
(``embedder.storage.output_lease``) from its recovery to its last step, and renews it while it works.
The manifest is replaced only after every file it lists is in place, and files it no longer
lists are removed only after it is replaced, so no crash leaves it naming a missing file. A
commit record that can no longer be applied (its files gone, or built on a manifest that has
changed since) is rolled back: its sources were never retired, so they are merged again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from embedder.errors import ConfigurationError, StorageError
from embedder.failpoints import failpoint
from embedder.storage import conditional_create
from embedder.storage import filesystems as storage
from embedder.storage import manifest as mf
from embedder.storage.dedup import CLAIM_SEQ, LoserStream, find_losers
from embedder.storage.output_lease import (
    DEFAULT_TTL_S,
    ExclusiveCreate,
    LeaseHeld,
    LeaseKeeper,
    LeaseLost,
    OutputLease,
)
from embedder.storage.schema import ShardMetadata, read_footer
from embedder.storage.shards import PARQUET_OPTIONS
from embedder.vectors import vector_faults

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
    # The queue (QueueSpec.key) whose rows this output holds; None: the output's own, or
    # that of the first shard.
    queue: str | None = None
    lease_ttl_s: float = DEFAULT_TTL_S
    # A conditional create for the output's object store (see embedder.storage.output_lease).
    create_exclusive: ExclusiveCreate | None = None
    # On a store without a conditional create: the operator's word that no other
    # consolidator writes this output (else the run is refused).
    sole_consolidator: bool = False

    def __post_init__(self) -> None:
        if self.shards_uri.rstrip("/") == self.output_uri.rstrip("/"):
            raise ConfigurationError(
                "the consolidated directory must differ from the shards directory"
            )
        if self.target_file_bytes < 16 << 10 or self.memory_limit_bytes < 64 << 20:
            raise ConfigurationError(
                "the target file size must be >= 16 KiB and the memory limit >= 64 MiB"
            )
        if self.lease_ttl_s < 3:
            raise ConfigurationError("the output lease TTL must be at least 3 seconds")


@dataclass
class ConsolidationReport:
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

    def lines(self) -> list[str]:
        """The report as an operator reads it."""
        lines = [
            f"consolidated {len(self.sources)} shards: {self.rows_in} rows in, "
            f"{self.rows_out} out, {self.duplicates_dropped} duplicates dropped, "
            f"{len(self.files)} files written ({self.elapsed_s}s)"
        ]
        lines.extend(f"  left in place: {name}: {why}" for name, why in self.bad_shards.items())
        return lines


@dataclass(frozen=True, slots=True)
class _Source:
    """One input of a run: a new shard or an existing output file."""

    name: str
    path: str
    fs: pafs.FileSystem
    rows: int
    bytes: int
    is_shard: bool


@dataclass(slots=True)
class _Attempt:
    """One attempt of a run: what it merges, onto which manifest, staged where."""

    shards: list[_Source]
    manifest: mf.Manifest
    queue: str | None
    report: ConsolidationReport
    staging: str
    to_copy: list[tuple[int, _Source]] = field(default_factory=list)


class _BadSource(Exception):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CommitRecord:
    """What a run is about to make visible, written before any of it is."""

    run_id: str
    staging: str
    files: list[str]
    supersedes: list[str]
    sources: list[str]
    retire: str
    manifest: mf.Manifest  # the manifest to write
    base: str | None  # the last run of the manifest it was built on (None: an empty one)
    base_known: bool = True  # False for records of versions that did not keep the base

    def to_bytes(self) -> bytes:
        body = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}
        body["manifest"] = orjson.loads(self.manifest.to_bytes())  # as _manifest.json holds it
        return orjson.dumps(body)

    @classmethod
    def from_bytes(cls, raw: bytes) -> CommitRecord:
        body: dict[str, Any] = orjson.loads(raw)
        known = "base" in body
        body.setdefault("base", None)
        body["base_known"] = body.get("base_known", known)
        body["manifest"] = mf.Manifest.from_bytes(orjson.dumps(body["manifest"]))
        return cls(**body)


class NoShardsDirectory(StorageError):
    """The shards directory does not exist: nothing was written there (yet)."""


class Consolidator:
    def __init__(self, settings: ConsolidateSettings) -> None:
        self.settings = settings
        self.fs_in, self.root_in = storage.open_root(
            settings.shards_uri, create=False, filesystem=settings.shards_filesystem
        )
        if storage.is_local(self.fs_in) and not Path(self.root_in).is_dir():
            raise NoShardsDirectory(
                f"no shards directory at {self.root_in}: nothing to consolidate. The embedder "
                "creates it when it writes its first shard; name the directory it writes "
                "(embed --output-dir) with --shards-dir, or its queue with --collection"
            )
        self.fs_out, self.root_out = storage.open_root(
            settings.output_uri, filesystem=settings.output_filesystem
        )
        # Raises LeaseLost unless this run still holds the output; set while a run holds it.
        self._confirm: Callable[[], None] = _not_held
        self._generation = 0  # of the output lease this run holds

    def run(self) -> ConsolidationReport:
        """One consolidation under the output's lease; ``LeaseHeld`` when another holds it."""
        lease = OutputLease(
            self.fs_out,
            self.root_out,
            ttl_s=self.settings.lease_ttl_s,
            create_exclusive=self.settings.create_exclusive
            or conditional_create.for_uri(self.settings.output_uri),
            sole_holder=self.settings.sole_consolidator,
        )
        lease.acquire()
        assert lease.holder is not None
        self._generation = lease.holder.generation
        try:
            with LeaseKeeper(lease, self.settings.lease_ttl_s) as keeper:
                self._confirm = keeper.check
                return self._run_held()
        finally:
            lease.release()

    def _run_held(self) -> ConsolidationReport:
        started = time.monotonic()
        self.recover()
        manifest = mf.load(self.fs_out, self.root_out)
        queue = self._output_queue(manifest)
        report = ConsolidationReport(run_id=_run_id())
        shards = [
            i
            for i in storage.list_parquet(self.fs_in, self.root_in)
            if i.base_name not in manifest.consumed()
        ]
        orphans = self._orphans(manifest)
        while shards or orphans:
            usable, queue = self._check_shards(shards, manifest, queue, report.bad_shards)
            if not usable and not orphans:
                break
            try:
                self._consolidate(usable, manifest, queue, report, orphans)
                break
            except _BadSource as bad:
                # A shard failed while being copied: forget this attempt, leave the shard in
                # place, and consolidate the others.
                log.error("shard %s is unreadable (%s); leaving it in place", bad.name, bad.reason)
                report.bad_shards[bad.name] = bad.reason
                self._discard_staging(only=report.run_id)
                shards = [s for s in shards if s.base_name not in report.bad_shards]
        report.elapsed_s = round(time.monotonic() - started, 3)
        return report

    # --- one attempt -------------------------------------------------------------------------

    def _output_queue(self, manifest: mf.Manifest) -> str | None:
        wanted = self.settings.queue
        if wanted and manifest.queue and wanted != manifest.queue:
            raise ConfigurationError(
                f"{self.settings.output_uri} holds the rows of queue {manifest.queue}, not of "
                f"{wanted}: give each queue its own consolidated directory"
            )
        return wanted or manifest.queue

    def _consolidate(
        self,
        shards: list[_Source],
        manifest: mf.Manifest,
        queue: str | None,
        report: ConsolidationReport,
        orphans: list[_Source],
    ) -> None:
        outputs = [
            _Source(
                f.name, f"{self.root_out}/{f.name}", self.fs_out, f.rows, f.bytes, is_shard=False
            )
            for f in manifest.files
        ]
        inputs = outputs + orphans + shards
        adopted = {o.name for o in orphans}
        work = self.settings.work_dir or Path(tempfile.gettempdir())
        with find_losers(
            [(s.fs, s.path) for s in inputs],
            memory_limit=self.settings.memory_limit_bytes // 2,
            work_dir=work,
        ) as losers:
            for index, reason in losers.unreadable.items():
                source = inputs[index]
                if not source.is_shard:
                    raise StorageError(f"consolidated file {source.name} is unreadable: {reason}")
                raise _BadSource(source.name, reason)
            attempt = _Attempt(
                shards,
                manifest,
                queue,
                report,
                staging=f"{self.root_out}/{_STAGING_PREFIX}{report.run_id}",
                to_copy=[
                    (i, s)
                    for i, s in enumerate(inputs)
                    if s.is_shard or s.name in adopted or i in losers.counts
                ],
            )
            self.fs_out.create_dir(attempt.staging, recursive=True)
            written = self._copy_all(attempt, losers.stream())
            report.duplicates_dropped = losers.count
        self._commit(attempt, written)

    def _copy_all(self, attempt: _Attempt, losers: LoserStream) -> list[tuple[str, int, list[str]]]:
        manifest = attempt.manifest
        inputs = [s for _, s in attempt.to_copy]
        reference = _reference(attempt)
        schema = _output_schema(read_footer(reference.fs, reference.path).schema)
        dimension, normalized = _vectors_of(schema, manifest)
        # Inputs are written with the same encoding as the output, so their bytes per row
        # predict the output's and files come out near the target size.
        row_bytes = sum(s.bytes for s in inputs) / max(1, sum(s.rows for s in inputs))
        writer = _RollingWriter(
            self.fs_out,
            attempt.staging,
            attempt.report.run_id,
            schema,
            target_bytes=self.settings.target_file_bytes,
            row_bytes=row_bytes,
            # A row group is buffered whole: at most a quarter of the memory limit.
            group_bytes=min(_ROW_GROUP_BYTES, self.settings.memory_limit_bytes // 4),
        )
        for index, source in attempt.to_copy:
            self._copy(source, index, losers, writer, dimension=dimension, normalized=normalized)
            failpoint("consolidate.mid-copy")
        return writer.close()

    def _commit(self, attempt: _Attempt, written: list[tuple[str, int, list[str]]]) -> None:
        shards, to_copy, manifest = attempt.shards, attempt.to_copy, attempt.manifest
        staging, report = attempt.staging, attempt.report
        reference = _reference(attempt)
        schema = read_footer(reference.fs, reference.path).schema
        dimension, normalized = _vectors_of(schema, manifest)
        made_by = ShardMetadata.from_schema(schema)
        report.sources = [s.name for s in shards]
        report.rewritten = [s.name for _, s in to_copy if not s.is_shard]
        report.rows_in = sum(s.rows for _, s in to_copy)
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
            model_id=manifest.model_id or made_by.model_id or None,
            model_sha=manifest.model_sha or made_by.model_sha or None,
            dimension=dimension,
            normalized=normalized,
            queue=attempt.queue,
            embed_key=manifest.embed_key or _first_embed_key(shards),
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
        record = CommitRecord(
            run_id=report.run_id,
            staging=staging,
            files=[f.name for f in report.files],
            supersedes=report.rewritten,
            sources=report.sources,
            retire=self.settings.retire,
            manifest=updated,
            base=manifest.runs[-1].run_id if manifest.runs else None,
        )
        commit_path = f"{self.root_out}/{_COMMIT_PREFIX}{report.run_id}.json"
        failpoint("consolidate.before-commit")
        self._confirm()  # the lease is ours for a fresh TTL: no one else recovers meanwhile
        storage.write_bytes_atomically(self.fs_out, commit_path, record.to_bytes())
        failpoint("consolidate.after-commit-record")
        if not self._apply(commit_path, record):
            raise StorageError(
                f"run {report.run_id} could not be committed (another consolidator changed "
                "the output meanwhile); it was rolled back and its shards are left in place"
            )
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
        index: int,
        losers: LoserStream,
        writer: _RollingWriter,
        *,
        dimension: int,
        normalized: bool,
    ) -> None:
        offset = 0
        try:
            with source.fs.open_input_file(source.path) as handle:
                for read in pq.ParquetFile(handle).iter_batches(batch_size=8192):
                    keep = np.ones(read.num_rows, dtype=bool)
                    keep[losers.take(index, offset + read.num_rows) - offset] = False
                    offset += read.num_rows
                    batch = _conform(
                        read if keep.all() else read.filter(pa.array(keep)), writer.schema
                    )
                    _refuse_bad_vectors(
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
        footer_rows = read_footer(self.fs_out, path).rows
        if footer_rows != rows:
            raise StorageError(f"{name} holds {footer_rows} rows, {rows} were written")
        return mf.OutputFile(name, rows, size, digest.hexdigest(), sources, mf.now_iso())

    # --- checks ----------------------------------------------------------------------------------

    def _check_shards(
        self, infos: list[Any], manifest: mf.Manifest, queue: str | None, bad: dict[str, str]
    ) -> tuple[list[_Source], str | None]:
        """The shards this output can take, and the queue whose rows it holds."""
        usable = []
        reference: tuple[str | None, int | None] = (manifest.model_id, manifest.dimension)
        embed_key = manifest.embed_key
        for info in infos:
            if info.base_name in bad:
                continue
            try:
                footer = read_footer(self.fs_in, info.path)
            except (OSError, pa.ArrowException) as exc:
                bad[info.base_name] = f"unreadable: {type(exc).__name__}: {exc}"
                continue
            schema, rows, made_by = footer.schema, footer.rows, footer.metadata
            problem = _schema_problem(schema)
            model = made_by.model_id or None
            dimension = schema.field("embedding").type.list_size if problem is None else None
            if problem is None and reference[0] is not None and (model, dimension) != reference:
                problem = f"made by {model} ({dimension}-d), the output holds {reference[0]} ({reference[1]}-d)"
            key = made_by.embed_key or None
            problem = problem or _embed_key_problem(key, embed_key)
            # Shards of older versions name no queue; they are taken as this output's.
            theirs = made_by.queue or None
            if problem is None and queue and theirs and theirs != queue:
                problem = (
                    f"holds rows of queue {theirs}, this output holds queue {queue}: "
                    "give each queue its own shards and consolidated directories"
                )
            if problem:
                bad[info.base_name] = problem
                continue
            reference = (model, dimension)
            queue = queue or theirs
            embed_key = embed_key or key
            usable.append(
                _Source(info.base_name, info.path, self.fs_in, rows, info.size or 0, is_shard=True)
            )
        for name, reason in bad.items():
            log.error("shard %s left in place: %s", name, reason)
        return usable, queue

    # --- commit and recovery --------------------------------------------------------------------

    def recover(self) -> None:
        """Finish (or roll back) a run whose commit record was written, then remove the
        staging of runs that never wrote one. Called under the output's lease: no other run
        can be staging meanwhile, and one that lost its lease fails its own next check."""
        infos = self.fs_out.get_file_info(pafs.FileSelector(self.root_out, allow_not_found=True))
        for info in sorted(infos, key=lambda i: i.base_name):
            if info.base_name.startswith(_COMMIT_PREFIX):
                log.warning("finishing the interrupted consolidation %s", info.base_name)
                record = CommitRecord.from_bytes(storage.read_bytes(self.fs_out, info.path))
                self._apply(info.path, record)
        self._discard_staging()

    def _apply(self, commit_path: str, record: CommitRecord) -> bool:
        """Idempotent: every step checks what is already done, so it may run more than once.
        False when the record could not be applied and was rolled back instead."""
        current = mf.load(self.fs_out, self.root_out)
        if record.run_id not in {run.run_id for run in current.runs}:
            # The manifest is not replaced yet: publish, check, then replace it.
            missing = self._publish(record)
            last = current.runs[-1].run_id if current.runs else None
            if missing or (record.base_known and last != record.base):
                why = (
                    f"{missing} is neither staged nor in place"
                    if missing
                    else (f"it was built on run {record.base}, the output is now at run {last}")
                )
                self._roll_back(commit_path, record, current, why)
                return False
            self._confirm()
            failpoint("consolidate.before-manifest")
            self._refuse_if_superseded()
            mf.save(
                self.fs_out,
                self.root_out,
                dataclasses.replace(record.manifest, lease_generation=self._generation),
            )
            failpoint("consolidate.after-manifest")
        # From here on the manifest no longer names what is removed.
        for name in record.supersedes:
            storage.remove(self.fs_out, f"{self.root_out}/{name}")
        for name in record.sources:
            self._retire(name, record.retire)
            failpoint("consolidate.mid-retire")
        storage.remove(self.fs_out, commit_path)
        if storage.exists(self.fs_out, record.staging):
            self.fs_out.delete_dir(record.staging)
        return True

    def _refuse_if_superseded(self) -> None:
        """A run paused past its lease (a VM pause, a GC stall) must not write its manifest
        over one that a later holder wrote. Read right before the replacement, this narrows
        the window to the few milliseconds of the write itself; ``_orphans`` heals the rest."""
        written_by = mf.load(self.fs_out, self.root_out).lease_generation
        if written_by > self._generation:
            raise LeaseLost(
                f"the manifest of {self.settings.output_uri} was written under lease generation "
                f"{written_by}, this run holds generation {self._generation}: it was taken over"
            )

    def _orphans(self, manifest: mf.Manifest) -> list[_Source]:
        """Published output files that the manifest does not list and no commit record names:
        left by a writer whose older manifest landed over a newer one. Merged again as inputs
        (duplicates resolved as always), so no row stays unreachable."""
        listed = {f.name for f in manifest.files}
        infos = self.fs_out.get_file_info(pafs.FileSelector(self.root_out, allow_not_found=True))
        pending = {
            name
            for i in infos
            if i.base_name.startswith(_COMMIT_PREFIX)
            for name in CommitRecord.from_bytes(storage.read_bytes(self.fs_out, i.path)).files
        }
        orphans = []
        for info in storage.list_parquet(self.fs_out, self.root_out):
            if info.base_name.startswith("part-") and info.base_name not in listed | pending:
                log.warning("adopting %s, an output file outside the manifest", info.base_name)
                with self.fs_out.open_input_file(info.path) as handle:
                    rows = pq.ParquetFile(handle).metadata.num_rows
                orphans.append(
                    _Source(
                        info.base_name, info.path, self.fs_out, rows, info.size or 0, is_shard=False
                    )
                )
        return orphans

    def _publish(self, record: CommitRecord) -> str | None:
        """Move the record's files into place; the name of one that is nowhere, if any."""
        for name in record.files:
            staged, final = f"{record.staging}/{name}", f"{self.root_out}/{name}"
            if storage.exists(self.fs_out, staged):
                storage.move(self.fs_out, staged, final)
            elif not storage.exists(self.fs_out, final):
                return name
            failpoint("consolidate.mid-publish")
        return None

    def _roll_back(
        self, commit_path: str, record: CommitRecord, current: mf.Manifest, why: str
    ) -> None:
        """Forget a commit that cannot be applied. Its sources were never retired (that
        follows the manifest), so the next run merges them again."""
        log.error("rolling back consolidation %s: %s", record.run_id, why)
        listed = {f.name for f in current.files}
        for name in record.files:
            if name not in listed:
                storage.remove(self.fs_out, f"{self.root_out}/{name}")
        if storage.exists(self.fs_out, record.staging):
            self.fs_out.delete_dir(record.staging)
        storage.remove(self.fs_out, commit_path)

    def _retire(self, name: str, how: str) -> None:
        path = f"{self.root_in}/{name}"
        if not storage.exists(self.fs_in, path):
            return
        if how == "move":
            self.fs_in.create_dir(f"{self.root_in}/{_RETIRED_DIR}", recursive=True)
            storage.move(self.fs_in, path, f"{self.root_in}/{_RETIRED_DIR}/{name}")
        else:
            self.fs_in.delete_file(path)

    def _discard_staging(self, only: str | None = None) -> None:
        """Staging directories of runs without a commit record (``only``: of this run)."""
        infos = self.fs_out.get_file_info(pafs.FileSelector(self.root_out, allow_not_found=True))
        committing = {
            i.base_name.removeprefix(_COMMIT_PREFIX).removesuffix(".json")
            for i in infos
            if i.base_name.startswith(_COMMIT_PREFIX)
        }
        for info in infos:
            if (
                not info.base_name.startswith(_STAGING_PREFIX)
                or info.type != pafs.FileType.Directory
            ):
                continue
            run_id = info.base_name.removeprefix(_STAGING_PREFIX)
            if run_id not in committing and (only is None or run_id == only):
                self.fs_out.delete_dir(info.path)


def consolidate_every(
    settings: ConsolidateSettings,
    *,
    every_s: float,
    stop: threading.Event,
    on_report: Callable[[ConsolidationReport], None],
) -> None:
    """``embedder consolidate --watch``: consolidate now and every ``every_s`` seconds until
    ``stop`` is set. Another consolidator holding the output is waited for, not an error."""
    while True:
        try:
            on_report(Consolidator(settings).run())
        except (LeaseHeld, NoShardsDirectory) as waiting:
            log.warning("%s; waiting", waiting)
        if stop.wait(every_s):
            return


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
        group_bytes: int = _ROW_GROUP_BYTES,
    ) -> None:
        self._fs, self._dir, self._run_id, self._schema = fs, directory, run_id, schema
        self.schema = schema
        row_bytes = max(row_bytes, 1.0)
        self._rows_per_file = max(1, int(target_bytes / row_bytes))
        self._rows_per_group = max(1024, int(min(group_bytes, target_bytes) / row_bytes))
        # Rows on disk are compressed; a buffered row group is not: bound its memory too.
        self._group_bytes = group_bytes
        self._pending_bytes = 0
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
            self._pending_bytes += head.nbytes
            if not self._sources or self._sources[-1] != source:
                self._sources.append(source)
            if (
                self._pending_rows >= self._rows_per_group
                or self._pending_bytes >= self._group_bytes
            ):
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
            self._pending, self._pending_rows, self._pending_bytes = [], 0, 0

    def _finish(self) -> None:
        self._flush()
        assert self._writer is not None
        self._writer.close()
        self._sink.close()
        if storage.is_local(self._fs):
            storage.fsync_file(Path(f"{self._dir}/{self._name}"))
        self._files.append((self._name, self._file_rows, list(dict.fromkeys(self._sources))))
        self._writer = None


def _vectors_of(schema: pa.Schema, manifest: mf.Manifest) -> tuple[int, bool]:
    """The dimension of a run's vectors, and whether they are unit length (as the output says
    once it has a manifest, else as the first shard does)."""
    dimension: int = schema.field("embedding").type.list_size
    if manifest.normalized is not None:
        return dimension, manifest.normalized
    return dimension, ShardMetadata.from_schema(schema).normalize


def _schema_problem(schema: pa.Schema) -> str | None:
    names = set(schema.names)
    missing = {"_id", "_id_kind", "embedding", "embedded_at"} - names
    if missing:
        return f"not a shard: missing columns {sorted(missing)}"
    kind = schema.field("embedding").type
    if not pa.types.is_fixed_size_list(kind) or kind.value_type != pa.float32():
        return f"embedding column is {kind}, not a fixed-size list of float32"
    return None


def _reference(attempt: _Attempt) -> _Source:
    """The input whose schema the output takes: the first shard, or an adopted file."""
    return (attempt.shards or [s for _, s in attempt.to_copy])[0]


def _first_embed_key(shards: list[_Source]) -> str | None:
    """The first embed key the shards record; None when they are of versions without one."""
    for shard in shards:
        if key := read_footer(shard.fs, shard.path).metadata.embed_key:
            return key
    return None


def _embed_key_problem(theirs: str | None, ours: str | None) -> str | None:
    """Rows of another embed key (another pooling, revision or prompt of the same model and
    dimension) are vectors of another space: one output never mixes two."""
    if theirs is None or ours is None or theirs == ours:
        return None
    return (
        f"made with embed key {theirs}, this output holds embed key {ours} (the same model "
        "with other server options or revision): give it its own shards and consolidated "
        "directories"
    )


def _refuse_bad_vectors(
    batch: pa.RecordBatch, dimension: int, normalized: bool, tolerance: float, source: str
) -> None:
    column = batch.column("embedding")
    if column.null_count:
        raise _BadSource(source, "null vectors")
    values = np.asarray(column.flatten()).reshape(-1, dimension)
    faults = vector_faults(values, normalized=normalized, tolerance=tolerance)
    if faults.nonfinite_rows:
        raise _BadSource(source, "vectors hold NaN or infinity")
    if faults.off_norm_rows:
        raise _BadSource(
            source,
            f"a vector's norm is off by {faults.worst_norm_error:.4f} though vectors are normalized",
        )


def _run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def _not_held() -> None:
    raise StorageError("the output is changed only under its lease: call run()")


def _output_schema(schema: pa.Schema) -> pa.Schema:
    """The shards' schema, with the claim_seq column even when the first shard predates it."""
    if CLAIM_SEQ in schema.names:
        return schema
    return schema.append(pa.field(CLAIM_SEQ, pa.int64()))


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """A batch in the output's column order; columns it lacks (claim_seq in rows of older
    versions) are null."""
    if batch.schema.names == schema.names:
        return batch
    columns = [
        batch.column(name) if name in batch.schema.names else pa.nulls(batch.num_rows, f.type)
        for name, f in zip(schema.names, schema, strict=True)
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)

"""The work queue of a file corpus: a claim is a chunk, marking is publishing its shard.

No coordinator: a worker claims a chunk by creating the chunk's next lease record
exclusively (``O_EXCL`` on a local or shared filesystem, ``PutObject`` with
``If-None-Match: *`` on S3: ``embedder.storage.output_lease``), renews it on every
heartbeat, and releases it once the chunk is done. A lease whose holder stopped renewing (or,
on the same host, whose process is gone) is taken over. When the last doc of a chunk is
marked (embedded or failed), the chunk's shard is published under the chunk's name, then its
failures, then its done mark; a chunk with a done mark is never claimed again.

The pipeline (``embedder.worker.pipeline``) runs unchanged on top: it sees claims of docs
(``{"_id": id, <text field>: text}``) under leases named for their chunks, and rows carry
their chunk's number as their claim number, which is how ``ChunkShardWriter`` keeps each
chunk's rows apart. Bad records found while reading a chunk never reach the pipeline: they go
to the chunk's failures with the docs the pipeline fails.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from embedder.errors import ConfigurationError, StorageError
from embedder.files.chunk_marks import (
    TEXT_CAUSE,
    ChunkDone,
    Failure,
    done_chunks,
    write_done,
    write_failures,
)
from embedder.files.chunk_shards import ChunkShardWriter
from embedder.files.layout import FilesOutput
from embedder.files.plan import Chunk, ChunkPlan
from embedder.files.readers import CorpusReader
from embedder.files.records import BadCause, BadRecord, FileRecord, RecordId
from embedder.queue.heartbeat import WorkerProgress
from embedder.queue.leases import Lease
from embedder.queue.liveness import Life, ProcessRef, life
from embedder.queue.marks import DoneMark
from embedder.queue.work_queue import AwaitedLease, Claim
from embedder.storage import conditional_create
from embedder.storage import filesystems as storage
from embedder.storage.output_lease import (
    ExclusiveCreate,
    Holder,
    LeaseHeld,
    LeaseLost,
    OutputLease,
)
from embedder.telemetry import Telemetry

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Held:
    """A chunk this worker holds: its lease, its docs not yet marked, its failures."""

    chunk: Chunk
    lease: OutputLease
    claimed_at: float
    places: dict[RecordId, tuple[int, int]]  # id -> (position, line or row) of its docs
    outstanding: int
    bad: list[BadRecord] = field(default_factory=list)  # found while reading
    failed: list[Failure] = field(default_factory=list)  # failed by the pipeline
    embedded: int = 0
    published: bool = False


class FileWorkQueue:
    """``WorkQueue`` over the chunks of this run's part (see the module)."""

    def __init__(
        self,
        output: FilesOutput,
        plan: ChunkPlan,
        reader: CorpusReader,
        writer: ChunkShardWriter,
        telemetry: Telemetry,
        *,
        lease_ttl_s: float = 60.0,
        create_exclusive: ExclusiveCreate | None = None,
        owner: str | None = None,
    ) -> None:
        require_exclusive_create(output, create_exclusive)
        self.owner = owner or uuid.uuid4().hex
        self._output = output
        self._plan = plan
        self._chunks = plan.part_chunks()
        self._reader = reader
        self._writer = writer
        self._telemetry = telemetry
        self._ttl = lease_ttl_s
        self._create = create_exclusive
        self._done: set[str] = set()
        self._held: dict[str, _Held] = {}
        self._chunk_of: dict[RecordId, str] = {}
        self._busy_until: dict[str, float] = {}  # chunks seen leased by others: until when

    # --- lifecycle --------------------------------------------------------------------------

    async def register(self) -> None:
        await asyncio.to_thread(self._output.make_dirs)

    async def heartbeat(self, progress: WorkerProgress | None = None) -> None:
        await asyncio.to_thread(self._renew)

    async def leave(self) -> None:
        await self.release([Lease(name, 0, 0, self.owner) for name in list(self._held)])

    async def paused(self) -> bool:
        return False

    # --- claim ------------------------------------------------------------------------------

    async def claim(self) -> Claim | None:
        return await asyncio.to_thread(self._claim)

    def _claim(self) -> Claim | None:
        self._done = done_chunks(self._output)
        now = time.time()
        for chunk in self._chunks:
            name = chunk.name
            if name in self._done or name in self._held or self._busy_until.get(name, 0) > now:
                continue
            taken = self._take(chunk)
            if taken is None:
                continue
            claim = self._read(chunk, *taken)
            if claim is not None:
                return claim
        return None

    def _take(self, chunk: Chunk) -> tuple[OutputLease, bool] | None:
        """The chunk's lease and whether it was taken over, or None when another holds it or
        it was finished meanwhile."""
        lease = self._lease(chunk.name)
        before = lease.current()
        try:
            lease.acquire()
        except LeaseHeld as held:
            self._busy_until[chunk.name] = held.holder.expires_at
            return None
        if storage.exists(self._output.fs, self._output.done_path(chunk.name)):
            lease.release()  # finished between our listing and our lease
            self._done.add(chunk.name)
            return None
        return lease, before is not None and not before.released

    def _read(self, chunk: Chunk, lease: OutputLease, taken_over: bool) -> Claim | None:
        """The chunk's docs as a claim; a chunk of bad records only is finished here (None)."""
        held = _Held(chunk, lease, time.time(), {}, 0)
        docs: list[dict[str, Any]] = []
        text_field = self._plan.source.text_field
        for record in self._reader.records(chunk.range):
            if not chunk.takes(record.position):
                continue
            if isinstance(record, BadRecord):
                held.bad.append(record)
            elif (first := self._plan.duplicates.get(record.position)) is not None:
                held.bad.append(_duplicate(record, first))
            else:
                held.places[record.id] = (record.position, record.line_or_row)
                docs.append(_as_doc(record, text_field))
        held.outstanding = len(docs)
        self._held[chunk.name] = held
        if not docs:
            self._finish(held)
            self._release_now(held)
            return None
        for doc in docs:
            self._chunk_of[doc["_id"]] = chunk.name
        lease_record = Lease(chunk.name, chunk.start, chunk.stop - 1, self.owner)
        return Claim(lease_record, docs, taken_over=taken_over, seq=chunk.index)

    # --- mark, release ----------------------------------------------------------------------

    async def mark(
        self,
        done_ids: list[Any],
        mark: DoneMark | None,
        failed: list[tuple[Any, str]],
        text_hashes: list[bytes] | None = None,
    ) -> int:
        """Account the docs to their chunks; publish every chunk that this completes."""
        touched: dict[str, _Held] = {}
        for doc_id in done_ids:
            held = self._owner_of(doc_id)
            held.embedded += 1
            held.outstanding -= 1
            touched[held.chunk.name] = held
        for doc_id, reason in failed:
            held = self._owner_of(doc_id)
            position, line = held.places[doc_id]
            held.failed.append(Failure(position, line, doc_id, reason, TEXT_CAUSE))
            held.outstanding -= 1
            touched[held.chunk.name] = held
        complete = [h for h in touched.values() if h.outstanding == 0]
        if complete:
            await asyncio.to_thread(self._finish_all, complete)
        return len(done_ids) + len(failed)

    def _owner_of(self, doc_id: Any) -> _Held:
        return self._held[self._chunk_of.pop(doc_id)]

    def _finish_all(self, chunks: Sequence[_Held]) -> None:
        for held in chunks:
            self._finish(held)

    def _finish(self, held: _Held) -> None:
        """Shard, then failures, then the done mark: the mark is written last, so a chunk
        marked done has its shard and its failures in place."""
        chunk = held.chunk
        receipt = self._writer.publish(chunk.index, chunk.name)
        failures = [Failure.of(b) for b in held.bad] + held.failed
        write_failures(self._output, chunk.name, failures)
        write_done(
            self._output,
            ChunkDone(
                chunk=chunk.name,
                shard=receipt.name,
                embedded=held.embedded,
                failed=len(failures),
                shard_bytes=receipt.bytes,
                host=socket.gethostname(),
                pid=os.getpid(),
                claimed_at=held.claimed_at,
                finished_at=time.time(),
            ),
        )
        held.published = True
        self._done.add(chunk.name)
        self._telemetry.shard_written(receipt.bytes)
        for bad in held.bad:
            self._telemetry.failed(bad.cause.summary, bad.cause)
        if held.bad:
            log.warning(
                "%s: %d bad records (first: line/row %d, %s): see %s",
                chunk.name,
                len(held.bad),
                held.bad[0].line_or_row,
                held.bad[0].reason,
                self._output.failures_path(chunk.name),
            )
        log.info(
            "%s done: shard %s, %d rows embedded, %d failed",
            chunk.name,
            receipt.name,
            held.embedded,
            len(failures),
        )

    async def release(self, leases: Sequence[Lease]) -> None:
        """Give the chunks' leases up; an unfinished chunk's rows are dropped (it is redone
        by whoever claims it next)."""
        let_go = [self._held.pop(lease.id) for lease in leases if lease.id in self._held]
        for held in let_go:
            if not held.published:
                self._writer.drop(held.chunk.index)
                for doc_id in held.places:
                    self._chunk_of.pop(doc_id, None)
        if let_go:
            await asyncio.to_thread(_release_all, [h.lease for h in let_go])

    def _release_now(self, held: _Held) -> None:
        self._held.pop(held.chunk.name, None)
        held.lease.release()

    def _renew(self) -> None:
        for name, held in list(self._held.items()):
            try:
                held.lease.renew()
            except LeaseLost as lost:
                # Finishing it anyway is harmless: its shard has the chunk's name, whoever
                # writes it, and its rows are the same.
                log.warning("%s: %s; finishing it all the same", name, lost)
            except (OSError, pa.ArrowException, StorageError) as exc:
                log.warning("renewing the lease of %s failed (tried again): %s", name, exc)

    # --- counts -----------------------------------------------------------------------------

    async def others_hold_leases(self) -> bool:
        return await asyncio.to_thread(self._others_hold)

    def _others_hold(self) -> bool:
        self._done = done_chunks(self._output)
        now = time.time()
        for chunk in self._chunks:
            if chunk.name in self._done or chunk.name in self._held:
                continue
            holder = self._lease(chunk.name).current()
            if holder is not None and not holder.free(now):
                return True
        return False

    async def leases_awaited(self) -> list[AwaitedLease]:
        return await asyncio.to_thread(self._awaited)

    def _awaited(self) -> list[AwaitedLease]:
        """Chunks whose holder is silent (two renewals missed) or gone: nothing but the
        lease's expiry frees them."""
        now = time.time()
        at = dt.datetime.fromtimestamp(now, dt.UTC)
        awaited = []
        for chunk in self._chunks:
            if chunk.name in self._done or chunk.name in self._held:
                continue
            holder = self._lease(chunk.name).current()
            if holder is None or holder.free(now):
                continue
            expires = dt.datetime.fromtimestamp(holder.expires_at, dt.UTC)
            renewed = expires - dt.timedelta(seconds=self._ttl)  # a renewal sets a full TTL
            state = life(ProcessRef(holder.host, holder.pid), renewed, expires, at)
            if state is not Life.ALIVE:
                lease = Lease(chunk.name, chunk.start, chunk.stop, holder.token)
                awaited.append(
                    AwaitedLease(
                        lease, state, expires, holder=f"{holder.host}:{holder.pid} on {chunk.name}"
                    )
                )
        return awaited

    async def pending_count(self) -> int:
        done = await asyncio.to_thread(done_chunks, self._output)
        return sum(c.rows for c in self._chunks if c.name not in done)

    async def done_count(self) -> int:
        done = await asyncio.to_thread(done_chunks, self._output)
        return sum(c.rows for c in self._chunks if c.name in done)

    def _lease(self, chunk: str) -> OutputLease:
        return OutputLease(
            self._output.fs,
            self._output.lease_root(chunk),
            ttl_s=self._ttl,
            create_exclusive=self._create,
            what=f"the lease of {chunk}",
        )


def require_exclusive_create(output: FilesOutput, create: ExclusiveCreate | None) -> None:
    """Refuse an output where two workers could both take one chunk (or plan it)."""
    if create is None and not storage.is_local(output.fs):
        raise ConfigurationError(
            f"{output.uri}: workers claim chunks by an exclusive create, which this store "
            "lacks; use a local or shared filesystem, or s3:// (with embedder[s3])"
        )


def chunk_holder(output: FilesOutput, chunk: str) -> Holder | None:
    """Who holds a chunk's lease now (None: nobody, or a released or expired record)."""
    lease = OutputLease(
        output.fs,
        output.lease_root(chunk),
        create_exclusive=conditional_create.for_uri(output.uri),
        sole_holder=True,  # only read here
    )
    holder = lease.current()
    return None if holder is None or holder.free(time.time()) else holder


def _release_all(leases: Sequence[OutputLease]) -> None:
    for lease in leases:
        lease.release()


def _duplicate(record: FileRecord, first: int) -> BadRecord:
    return BadRecord(
        record.position,
        record.line_or_row,
        record.id,
        f"id {record.id!r} is also that of position {first} (line/row {first + 1}), "
        "which is embedded",
        BadCause.DUPLICATE_ID,
    )


def _as_doc(record: FileRecord, text_field: str) -> dict[str, Any]:
    """The doc the pipeline reads: the text at the same dotted path it looks under."""
    doc: dict[str, Any] = {"_id": record.id}
    if record.text is None:
        return doc
    *parents, leaf = text_field.split(".")
    inner = doc
    for part in parents:
        inner = inner.setdefault(part, {})
    inner[leaf] = record.text
    return doc

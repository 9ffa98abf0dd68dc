"""One worker: claim → batch → embed → shard → mark → release, as bounded asyncio stages.

The invariant that makes crashes harmless: a doc is marked done only after the shard holding
its vector is durable. A crash anywhere re-embeds at most the docs of unreleased leases; the
consolidator's de-duplication by ``_id`` makes the final output exactly-once.

Memory: a doc's text is kept only until its request answers; from then until its shard is
durable and it is marked (up to a shard's rows or age) the worker keeps its id and text hash.

Stopping (a signal): claim nothing more and send nothing more; the requests in flight get
up to ``drain_timeout_s`` to answer, then are abandoned; make durable and mark what came back,
release every lease (docs claimed but never sent, or abandoned, are pending again, for any
worker: marked docs have left the queue, so a lease's range holds only those), return.
Marking and releasing run to their end even when the stages are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from embedder import logs
from embedder.errors import ConfigurationError
from embedder.fleet.routing import Fleet
from embedder.queue.heartbeat import WorkerProgress
from embedder.queue.leases import Lease
from embedder.queue.marks import DoneMark
from embedder.queue.work_queue import AwaitedLease, Claim
from embedder.storage.shards import ShardReceipt, ShardWriter
from embedder.telemetry import Summary, Telemetry
from embedder.worker.batching import BatchLimits, oversized, plan_batches
from embedder.worker.documents import Doc, Embedded, FailureCause, Rejected, to_doc
from embedder.worker.hedging import TailHedging
from embedder.worker.progress import Pace, Progress, Silent, duration
from embedder.worker.reuse import TextReuse

log = logging.getLogger(__name__)


class WorkQueue(Protocol):
    """What the pipeline needs of a queue (MongoDB in production, in memory in benchmarks)."""

    owner: str

    async def register(self) -> None: ...
    async def heartbeat(self, progress: WorkerProgress | None = None) -> None: ...
    async def leave(self) -> None: ...
    async def claim(self) -> Claim | None: ...
    async def release(self, leases: Sequence[Lease]) -> None: ...
    async def others_hold_leases(self) -> bool: ...
    async def leases_awaited(self) -> Sequence[AwaitedLease]: ...
    async def pending_count(self) -> int: ...
    async def done_count(self) -> int: ...
    async def paused(self) -> bool: ...
    async def mark(
        self,
        done_ids: list[Any],
        mark: DoneMark | None,
        failed: list[tuple[Any, str]],
        text_hashes: list[bytes] | None = None,
    ) -> int: ...


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    text_field: str = "text"
    once: bool = False
    poll_interval_s: float = 5.0
    heartbeat_interval_s: float = 20.0
    drain_timeout_s: float = 90.0  # after a stop: in-flight work given up past this
    log_interval_s: float = 10.0
    gauge_interval_s: float = 60.0

    def __post_init__(self) -> None:
        positive = {
            "poll_interval_s": self.poll_interval_s,
            "heartbeat_interval_s": self.heartbeat_interval_s,
            "log_interval_s": self.log_interval_s,
            "gauge_interval_s": self.gauge_interval_s,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigurationError(f"{name} must be positive, not {value}")
        if not self.drain_timeout_s >= 0:
            raise ConfigurationError(
                f"drain_timeout_s must be 0 or more, not {self.drain_timeout_s}"
            )
        if not self.text_field:
            raise ConfigurationError("the text field must be named")


@dataclass(slots=True)
class LeaseTracker:
    """Counts a lease's docs not yet marked; the lease is released when none remain."""

    lease: Lease
    outstanding: int
    seq: int = 0  # the claim's MongoDB-issued sequence number, written on every row


@dataclass(slots=True)
class Batch:
    docs: list[Doc]
    trackers: list[LeaseTracker]


@dataclass(slots=True)
class Outcome:
    """What the sink receives: embedded docs (no texts) with their vectors, and failures."""

    done: list[tuple[Embedded, LeaseTracker]] = field(default_factory=list)
    vectors: np.ndarray | None = None
    failed: list[tuple[Rejected, LeaseTracker]] = field(default_factory=list)
    fresh: bool = True  # the vectors came from the fleet (not reused): worth caching


_END = None  # sentinel through the stage queues
_APPEND_ROWS = 2048  # rows handed to the shard writer at a time
# The first docs a worker claims, this many, failing one settings-shaped way are taken for a
# configuration mistake (a mistyped --text-field). Fewer are marked failed as usual: a stray
# doc or two must not stop a long-running worker, and a few marks are cheap to undo.
_SETTINGS_CHECK_MIN_DOCS = 10


class Worker:
    def __init__(
        self,
        queue: WorkQueue,
        fleet: Fleet,
        shards: ShardWriter,
        telemetry: Telemetry,
        settings: WorkerSettings,
        *,
        progress: Progress | None = None,
        reuse: TextReuse[LeaseTracker] | None = None,
        embed_key: str = "",
        reporter: Callable[[WorkerProgress], None] | None = None,
    ) -> None:
        self._queue = queue
        # Under a supervisor (embed --processes) the progress record goes there every log
        # interval, and the supervisor logs one line for all its workers instead of each.
        self._reporter = reporter
        self._reuse = reuse
        self._progress: Progress = progress or Silent()
        self._fleet = fleet
        self._shards = shards
        self._telemetry = telemetry
        self._settings = settings
        self._embedders = max(1, fleet.max_inputs_in_flight // fleet.batch_size)
        self._batches: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=self._embedders * 2)
        self._outcomes: asyncio.Queue[Outcome | None] = asyncio.Queue(maxsize=self._embedders * 2)
        self._stopping = asyncio.Event()
        self._limits = fleet.batch_limits()
        info = fleet.info
        self._mark = DoneMark(info.model_id, info.model_sha, "", embed_key)
        self._paused_logged = False
        # Marked later, with the next shard's marks: docs the sink has finished with.
        self._unmarked_done: list[tuple[Embedded, LeaseTracker]] = []
        self._unmarked_failed: list[tuple[Rejected, LeaseTracker]] = []
        # Embedded rows not yet handed to the shard writer.
        self._rows: list[Outcome] = []
        self._buffered = 0
        self._tokens_reported = 0
        self._pace = Pace()  # docs embedded per second over the last log interval
        self._beat_pace = Pace()  # the same over the last heartbeat interval, for status
        self._unembedded_base: int | None = None  # see _remaining
        self._in_flight = [0, 0]  # requests, and their docs, sent and not answered
        self._in_hand = 0  # docs handed to the sink (embedded or failed), not marked yet
        self._polling = False  # the claim loop found nothing and waits (idle if holding none)
        self._waiting_for = ""  # a gone worker's lease this one waits for, as status says
        self._held: dict[str, LeaseTracker] = {}  # leases claimed and not yet released
        # The failures of the first docs claimed, held back from the sink while every one of
        # them failed (None once the options are known to be right): see _check_settings.
        self._first_failures: list[tuple[Rejected, LeaseTracker]] | None = []
        self._first_seen = 0
        self._last_shard = ""
        self._phases = telemetry.summary.phases
        self._hedging = TailHedging(fleet)

    @property
    def summary(self) -> Summary:
        return self._telemetry.summary

    def request_stop(self) -> None:
        """Stop claiming and sending; the requests in flight get up to ``drain_timeout_s``;
        what came back is written and marked, every lease is released (docs never sent are
        pending again), then run() returns."""
        if not self._stopping.is_set():
            requests, sent = self._in_flight
            unsent = sum(t.outstanding for t in self._held.values()) - sent - self._in_hand
            log.warning(
                "stopping: finishing %d requests in flight (%d docs), making durable and "
                "marking %d docs, then releasing %d docs not sent; at most %.0fs",
                requests,
                sent,
                self._in_hand + sent,
                max(unsent, 0),
                self._settings.drain_timeout_s,
            )
            self._stopping.set()

    async def run(self) -> Summary:
        self._phases.reach("worker_started")
        await self._queue.register()
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._log_loop(), name="progress"),
            asyncio.create_task(self._queue_gauges_loop(), name="queue-gauges"),
        ]
        try:
            # One group: a stage that fails (the sink on a full disk, say) cancels the others,
            # which would otherwise wait forever on queues nobody drains.
            async with asyncio.TaskGroup() as stages:
                claiming = stages.create_task(self._claim_loop(), name="claim")
                embedding = stages.create_task(self._embed_all(), name="embed")
                stages.create_task(self._sink_loop(), name="sink")
                background.append(
                    asyncio.create_task(self._bound_drain(claiming, embedding), name="drain")
                )
        except BaseExceptionGroup as failed:
            raise _first_cause(failed) from failed
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            self._progress.close()
        # Leases whose docs were never sent or abandoned at the drain bound: pending again.
        await _shielded(self._release_held())
        await self._queue.leave()
        self._phases.reach("finished")
        log.info(
            "run finished: %s",
            "; ".join(self.summary.lines()),
            extra=logs.fields(summary=self.summary.as_dict()),
        )
        return self.summary

    # --- claim ------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            claim = await self._queue.claim()
            self._polling = claim is None
            self._note_idle()
            if claim is None:
                if self._first_failures:  # the queue held fewer docs than the check wants
                    await self._give_up_the_settings_check()
                if await self._queue.paused():
                    # Paused (embedder pause): claim nothing, finish what is held, and wait
                    # for resume, even with --once.
                    if not self._paused_logged:
                        log.warning("the queue is paused: waiting for `embedder resume`")
                        self._paused_logged = True
                    await self._pause(self._settings.poll_interval_s)
                    continue
                if self._paused_logged:
                    # That claim saw the queue still paused: claim again, now resumed.
                    log.info("the queue is resumed")
                    self._paused_logged = False
                    continue
                self._phases.reach("queue_empty")
                if self._settings.once and not await self._queue.others_hold_leases():
                    break
                await self._note_awaited_leases()
                # Nothing free now: new docs may arrive, or another worker's lease may
                # expire (a dead worker) and be taken over.
                await self._pause(self._settings.poll_interval_s)
                continue
            self._note_waiting("")
            await self._dispatch(claim)
        # Only on a normal finish: a cancelled stage must not wait on a queue.
        for _ in range(self._embedders):
            await self._batches.put(_END)

    async def _dispatch(self, claim: Claim) -> None:
        self._telemetry.claimed(len(claim.documents))
        tracker = LeaseTracker(claim.lease, len(claim.documents), claim.seq)
        self._held[claim.lease.id] = tracker
        self._telemetry.leases.set(len(self._held))
        if self._stopping.is_set():
            return  # claimed as the stop came: released unsent, with the rest
        if claim.taken_over:
            self._telemetry.lease_taken_over()
        docs: list[Doc] = []
        rejected = Outcome()
        for raw in claim.documents:
            item = _checked(raw, self._settings.text_field, self._limits)
            if isinstance(item, Rejected):
                rejected.failed.append((item, tracker))
            else:
                docs.append(item)
        if self._first_failures is not None and not claim.taken_over:
            # A dead worker's leftovers may be odd: only this worker's own claims count.
            rejected = await self._check_settings(len(claim.documents), bool(docs), rejected)
        if rejected.failed:
            await self._to_sink(rejected)
        if self._reuse is not None:
            split = await self._reuse.split(docs, tracker)
            self._telemetry.reused(split.from_run, split.from_cache)
            if split.reused:
                await self._to_sink(
                    Outcome(
                        done=[(Embedded.of(doc), t) for doc, t in split.reused],
                        vectors=np.stack(split.vectors),
                        fresh=False,
                    )
                )
            docs = split.send
        self._telemetry.sent(len(docs))
        for group in plan_batches(docs, self._limits):
            if self._stopping.is_set():
                break
            await self._batches.put(Batch(group, [tracker] * len(group)))

    async def _check_settings(self, claimed: int, any_good: bool, rejected: Outcome) -> Outcome:
        """While the first docs claimed all fail the same settings-shaped way (no doc has the
        text field, or none holds a string there), hold their failures back; what to hand to
        the sink now. Once the first docs (up to ``_SETTINGS_CHECK_MIN_DOCS``, across claims)
        all failed that way the options are wrong: stop before marking any of them failed
        (undoing that means rewriting every doc). One good doc, or another cause, ends the
        check and the held failures go on to be marked."""
        assert self._first_failures is not None
        self._first_failures += rejected.failed
        self._first_seen += claimed
        causes = {failure.cause for failure, _ in self._first_failures}
        one_settings_cause = len(causes) == 1 and causes.pop().points_at_settings
        if any_good or not one_settings_cause:
            held, self._first_failures = self._first_failures, None
            return Outcome(failed=held)
        if self._first_seen >= _SETTINGS_CHECK_MIN_DOCS:
            await self._refuse_a_settings_mistake()
        return Outcome()

    async def _give_up_the_settings_check(self) -> None:
        """The queue ran dry before the check saw enough docs: mark the few held failures."""
        held, self._first_failures = self._first_failures or [], None
        first = held[0][0]
        log.warning(
            "the %d docs claimed so far all failed (%s, doc %r and every other): marked failed; "
            "if --text-field (%r) or --filter is wrong, fix it and run `embedder requeue "
            "--failed`",
            len(held),
            first.reason,
            first.id,
            self._settings.text_field,
        )
        await self._to_sink(Outcome(failed=held))

    async def _refuse_a_settings_mistake(self) -> None:
        """Release the leases of the held failures, unmarked, and stop naming the option."""
        held = self._first_failures or []
        leases = {tracker.lease.id: tracker.lease for _, tracker in held}
        await self._queue.release(list(leases.values()))
        for lease_id in leases:
            del self._held[lease_id]
        first = held[0][0]
        raise ConfigurationError(
            f"none of the first {len(held)} docs claimed can be embedded "
            f"({first.reason}, doc {first.id!r} and every other): check "
            f"--text-field ({self._settings.text_field!r}), and --filter if only some docs "
            "have it; nothing was marked"
        )

    async def _pause(self, seconds: float) -> None:
        started = time.perf_counter()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        self._phases.waited("claim_poll", time.perf_counter() - started)

    # --- embed ------------------------------------------------------------------------------

    async def _embed_all(self) -> None:
        async with asyncio.TaskGroup() as embedders:
            for i in range(self._embedders):
                embedders.create_task(self._embed_batches(), name=f"embed-{i}")
        if self._hedging.hedged:
            log.info(
                "end of the queue: %d batch(es) sent again to idle endpoints, %d answered first",
                self._hedging.hedged,
                self._hedging.won,
            )
        await self._outcomes.put(_END)  # the sink's cue; see _bound_drain when cancelled

    async def _embed_batches(self) -> None:
        phases = self._phases
        while (batch := await self._batches.get()) is not _END:
            if self._stopping.is_set():
                continue  # never sent: its docs stay pending, released with their lease
            phases.reach("first_sent")
            phases.reach("last_sent", last=True)
            self._in_flight[0] += 1
            self._in_flight[1] += len(batch.docs)
            try:
                result = await self._hedging.embed([d.text for d in batch.docs])
            finally:
                self._in_flight[0] -= 1
                self._in_flight[1] -= len(batch.docs)
            phases.answered += len(batch.docs)
            phases.reach("first_answered")
            phases.reach("last_answered", last=True)
            if "ramped" not in phases.marks and not self._fleet.ramping:
                phases.reach("ramped")
            pairs = list(zip(batch.docs, batch.trackers, strict=True))
            ok = result.succeeded()
            # From here on the texts are dropped: the sink holds ids and text hashes only.
            outcome = Outcome(
                done=[(Embedded.of(d), t) for (d, t), keep in zip(pairs, ok, strict=True) if keep],
                vectors=result.vectors if not result.failures else result.vectors[ok],
                failed=[
                    (Rejected(doc.id, result.failures[i], FailureCause.REJECTED_BY_SERVER), t)
                    for i, (doc, t) in enumerate(pairs)
                    if not ok[i]
                ],
            )
            await self._to_sink(outcome)
            if self._reuse is not None:
                await self._hand_to_waiters(outcome, pairs, ok)
        # The first end-of-work cue: every batch has been taken, so sent.
        self._hedging.nothing_left()

    async def _hand_to_waiters(
        self, outcome: Outcome, pairs: list[tuple[Doc, LeaseTracker]], ok: np.ndarray
    ) -> None:
        """Docs that waited for a text this batch carried get its vector (or its failure)."""
        assert self._reuse is not None and outcome.vectors is not None
        waited = Outcome(fresh=False)
        rows: list[int] = []
        sent = [doc for (doc, _), keep in zip(pairs, ok, strict=True) if keep]
        for row, doc in enumerate(sent):
            waiters = self._reuse.embedded(doc, outcome.vectors[row].copy())
            waited.done += [(Embedded.of(w), t) for w, t in waiters]
            rows += [row] * len(waiters)
        refused = [doc for (doc, _), keep in zip(pairs, ok, strict=True) if not keep]
        # ``refused`` holds the Docs of ``outcome.failed``, in the same order.
        for doc, (failure, _) in zip(refused, outcome.failed, strict=True):
            waited.failed += [
                (Rejected(w.id, failure.reason, failure.cause), t)
                for w, t in self._reuse.failed(doc)
            ]
        if waited.done:
            waited.vectors = outcome.vectors[rows]
        if waited.done or waited.failed:
            await self._to_sink(waited)

    # --- shard, mark, release -----------------------------------------------------------------

    async def _to_sink(self, outcome: Outcome) -> None:
        """Hand docs that are decided (vectors back, or failed) to the sink: progress counts
        them embedded now, and marked once their shard is durable."""
        self._in_hand += len(outcome.done) + len(outcome.failed)
        self._telemetry.embedded(len(outcome.done))
        tokens = self._telemetry.summary.tokens
        self._progress.embedded(
            len(outcome.done), len(outcome.failed), tokens - self._tokens_reported
        )
        self._tokens_reported = tokens
        await self._outcomes.put(outcome)

    async def _sink_loop(self) -> None:
        while True:
            # An idle pipeline commits what it holds: leases are released only once their
            # docs are marked, and other workers (and --once) wait for those leases.
            timeout = min(self._shards.seconds_until_due(), self._settings.poll_interval_s)
            try:
                outcome = await asyncio.wait_for(self._outcomes.get(), timeout=max(timeout, 0.01))
            except TimeoutError:
                self._phases.waited("sink_idle", timeout)
                await self._commit()
                continue
            if outcome is _END:
                await self._commit()
                return
            if outcome.done and outcome.vectors is not None:
                self._rows.append(outcome)
                self._buffered += len(outcome.done)
            self._unmarked_failed.extend(outcome.failed)
            if self._buffered >= min(_APPEND_ROWS, self._shards.room):
                await self._append_buffered()
            if self._shards.due():
                await self._commit()

    async def _append_buffered(self) -> None:
        """Hand buffered rows to the shard writer in one call: one thread hop per chunk."""
        if not self._rows:
            return
        outcomes, self._rows, self._buffered = self._rows, [], 0
        ids = [doc.id for outcome in outcomes for doc, _ in outcome.done]
        hashes = [doc.text_hash for outcome in outcomes for doc, _ in outcome.done]
        seqs = [tracker.seq for outcome in outcomes for _, tracker in outcome.done]
        vectors = np.concatenate([o.vectors for o in outcomes if o.vectors is not None])
        fresh = np.concatenate(
            [np.full(len(o.done), o.fresh) for o in outcomes if o.vectors is not None]
        )
        await asyncio.to_thread(
            self._shards.append, ids, vectors, dt.datetime.now(dt.UTC), hashes, seqs
        )
        for outcome in outcomes:
            self._unmarked_done.extend(outcome.done)
        cache = self._reuse.cache if self._reuse is not None else None
        if cache is not None and fresh.any():
            new = [h for h, f in zip(hashes, fresh, strict=True) if f]
            await cache.store_soon(new, vectors[fresh])

    async def _commit(self) -> None:
        await _shielded(self._commit_now())

    async def _commit_now(self) -> None:
        """Make the open shard durable, then mark its docs and the failures, then release."""
        await self._append_buffered()
        receipt: ShardReceipt | None = await asyncio.to_thread(self._shards.roll)
        self._phases.reach("last_rolled", last=True)
        if receipt is not None:
            self._last_shard = receipt.name
            self._telemetry.shard_written(receipt.bytes)
            log.info(
                "shard %s durable: %d rows, %d bytes", receipt.name, receipt.rows, receipt.bytes
            )
        done, failed = self._unmarked_done, self._unmarked_failed
        if not done and not failed:
            return
        mark = dataclasses.replace(self._mark, shard=receipt.name if receipt else "")
        started = time.perf_counter()
        # Each mark names the hash of the text that was embedded: a text edited meanwhile
        # differs from it, and the change watcher re-queues the doc (embedder.worker.change_watch).
        await self._queue.mark(
            [doc.id for doc, _ in done],
            mark if done else None,
            [(failure.id, failure.reason) for failure, _ in failed],
            [doc.text_hash for doc, _ in done],
        )
        self._telemetry.mark_seconds.observe(time.perf_counter() - started)
        self._telemetry.marked(len(done))
        self._progress.marked(len(done))
        self._in_hand -= len(done) + len(failed)
        for failure, _ in failed:
            log.warning("doc %r failed for good: %s", failure.id, failure.reason)
            self._telemetry.failed(failure.reason, failure.cause)
        self._unmarked_done, self._unmarked_failed = [], []
        finished = [t for _, t in done] + [t for _, t in failed]
        await self._settle(finished)
        self._phases.reach("last_marked", last=True)

    async def _settle(self, trackers: list[LeaseTracker]) -> None:
        for tracker in trackers:
            tracker.outstanding -= 1
        finished = [t.lease for t in {id(t): t for t in trackers}.values() if t.outstanding == 0]
        await self._queue.release(finished)
        for lease in finished:
            self._held.pop(lease.id, None)
        self._telemetry.leases.set(len(self._held))
        self._note_idle()

    async def _release_held(self) -> None:
        """After a drain: leases still held cover docs given up at the bound (not marked),
        which are pending again once released."""
        if not self._held:
            return
        leases = [t.lease for t in self._held.values()]
        log.warning(
            "releasing %d leases with %d docs not finished: they are pending again",
            len(leases),
            sum(t.outstanding for t in self._held.values()),
        )
        await self._queue.release(leases)
        self._held.clear()
        self._telemetry.leases.set(0)

    async def _bound_drain(
        self, claiming: asyncio.Task[None], embedding: asyncio.Task[None]
    ) -> None:
        """Once stopping, give claiming and embedding ``drain_timeout_s`` to finish; past it,
        abandon them (their docs are redone later) and let the sink commit what it has."""
        await self._stopping.wait()
        bound = self._settings.drain_timeout_s
        _, late = await asyncio.wait([claiming, embedding], timeout=bound)
        if not late:
            return
        log.warning(
            "drain timeout (%.0fs) reached: abandoning the requests in flight; their docs are "
            "released and redone by a later claim",
            bound,
        )
        for task in late:
            task.cancel()
        await asyncio.wait(late)
        if embedding in late:
            await self._outcomes.put(_END)  # what _embed_all would have sent

    # --- background ---------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.heartbeat_interval_s)
            try:
                rate = self._beat_pace.sample(self.summary.embedded)
                await self._queue.heartbeat(self._progress_record(rate))
            except Exception as exc:  # a missed beat is retried; the lease TTL has headroom
                log.warning("heartbeat failed: %s", exc)

    def _progress_record(self, rate: float) -> WorkerProgress:
        summary = self.summary
        return WorkerProgress(
            embedded=summary.embedded,
            marked=summary.marked,
            failed=summary.failed,
            rate_docs_per_s=round(rate, 1),
            leases=len(self._held),
            last_shard=self._last_shard,
            reused=summary.reused_in_run + summary.reused_from_cache,
            paused=self._paused_logged,  # waiting for `embedder resume`
            waiting_for=self._waiting_for,
        )

    async def _queue_gauges_loop(self) -> None:
        """Pending and done counts for /metrics, from the two indexes, once a minute."""
        while True:
            try:
                pending = await self._queue.pending_count()
                self._telemetry.queue_pending.set(pending)
                self._telemetry.queue_done.set(await self._queue.done_count())
                self._unembedded_base = pending + self.summary.marked
            except Exception as exc:  # the gauges may lag; the run goes on
                log.warning("counting the queue failed: %s", exc)
            await asyncio.sleep(self._settings.gauge_interval_s)

    async def _log_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.log_interval_s)
            summary = self.summary
            rate = self._pace.sample(summary.embedded)
            if self._reporter is not None:  # the supervisor shows one line for all processes
                self._reporter(self._progress_record(rate))
                continue
            log.info(
                "embedded %d docs (%.0f docs/s, ETA %s), %d durable and marked, failed %d, "
                "retries %d, shards %d",
                summary.embedded,
                rate,
                duration(self._pace.eta_s(self._remaining())),
                summary.marked,
                summary.failed,
                summary.retries,
                summary.shards,
            )

    def _remaining(self) -> int | None:
        """Docs still to embed: pending at the last count (which holds the docs embedded but
        not yet marked), less those embedded since."""
        if self._unembedded_base is None:
            return None
        return max(self._unembedded_base - self.summary.embedded, 0)

    def _note_idle(self) -> None:
        """Idle while the claim loop finds nothing and no lease is held: the summary's rate
        leaves that time out."""
        if self._polling and not self._held:
            self.summary.idle()
        else:
            self.summary.busy()

    async def _note_awaited_leases(self) -> None:
        """Nothing claimable: if a gone (or silent) worker's lease is what holds docs back,
        say so once, and in the heartbeat."""
        try:
            awaited = await self._queue.leases_awaited()
        except Exception as exc:  # only a message depends on it
            log.debug("reading the leases of other workers failed: %s", exc)
            return
        self._note_waiting("; ".join(a.describe() for a in awaited[:3]))

    def _note_waiting(self, what: str) -> None:
        if what and what != self._waiting_for:
            log.warning("waiting for %s", what)
        self._waiting_for = what


async def _shielded[T](work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to its end even if the caller is cancelled meanwhile (a sibling stage
    failed): a shard made durable gets its docs marked, a finished lease gets released.
    The cancellation is passed on once the work is done."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():  # the work itself was cancelled (the loop is closing)
                raise
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result


def _first_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception that stopped the stages, not the cancellations it caused."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_cause(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


def _checked(raw: Mapping[str, Any], text_field: str, limits: BatchLimits) -> Doc | Rejected:
    item = to_doc(raw, text_field)
    if isinstance(item, Doc):
        return oversized(item, limits) or item
    return item

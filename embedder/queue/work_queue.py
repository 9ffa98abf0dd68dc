"""The MongoDB work queue: claim runs of pending docs under leases, mark them, release.

Round trips per claim: one range read of pending docs (``_id`` and text, through the partial
index; one more per BSON type where a page crosses from one ``_id`` type to the next, since
MongoDB's range predicates stay within a type) and one compare-and-set of the queue's control
document that advances the cursor and records the lease together. Marking a shard's docs is
one bulk write. No write ever touches a document to claim it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient, ReturnDocument, UpdateMany, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from embedder.errors import ConfigurationError, QueueError
from embedder.ids import Bound, after, id_type, read_range, unsupported_clause
from embedder.queue.heartbeat import Heartbeat, WorkerProgress
from embedder.queue.leases import ClaimPlan, ControlView, Lease, plan_claim
from embedder.queue.liveness import FORGET_AFTER, Life, ProcessRef
from embedder.queue.marks import DoneMark, FailedMark, done_query
from embedder.queue.retry import MongoRetry
from embedder.queue.spec import QueueSpec
from embedder.worker.documents import reading_options

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
_MARK_CHUNK = 500  # ids per $in: well inside every server's limits


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class Claim:
    lease: Lease
    documents: Sequence[Mapping[str, Any]]
    taken_over: bool
    # Issued by MongoDB (the control document's version after this claim's write): a later
    # claim of a doc has a higher one, whatever the hosts' clocks. Rows carry it, and the
    # consolidator keeps the row of the latest claim.
    seq: int = 0


@dataclass(frozen=True, slots=True)
class AwaitedLease:
    """Another worker's lease that only its expiry will free."""

    lease: Lease
    owner_life: Life
    expires_at: dt.datetime
    holder: str = ""  # who holds it, where the owner id says little (a chunk's host:pid)

    def describe(self) -> str:
        at = self.expires_at.astimezone(dt.UTC).strftime("%H:%M:%S UTC")
        who = self.holder or self.lease.owner[:8]
        return f"lease of worker {who} ({self.owner_life}) to expire at {at}"


class MongoWorkQueue:
    def __init__(
        self,
        client: AsyncMongoClient[dict[str, Any]],
        spec: QueueSpec,
        *,
        claim_size: int = 1000,
        lease_ttl_s: float = 60.0,
        clock: Clock = utc_now,
        owner: str | None = None,
        retry: MongoRetry | None = None,
    ) -> None:
        self.spec = spec
        db = client.get_database(spec.database, codec_options=reading_options(client.codec_options))
        self._docs: AsyncCollection[dict[str, Any]] = db[spec.collection]
        self._control: AsyncCollection[dict[str, Any]] = db[spec.control_collection]
        self._claim_size = claim_size
        self._ttl = dt.timedelta(seconds=lease_ttl_s)
        self._clock = clock
        self.owner = owner or uuid.uuid4().hex
        self._view: ControlView | None = None
        self._retry = retry or MongoRetry()
        self._held: set[str] = set()  # ids of the leases this worker knows it holds
        self._process = ProcessRef.current()

    # --- lifecycle --------------------------------------------------------------------------

    async def register(self) -> None:
        """Create the control document if needed and announce this worker."""
        await self._retry(
            "creating the control document", lambda: create_control(self._control, self.spec.key)
        )
        await self.heartbeat()
        await self._forget_long_gone()

    async def _forget_long_gone(self) -> None:
        """Remove the entries of workers gone for ``FORGET_AFTER`` and holding no lease: a
        killed worker never removes its own, and the document would grow with every kill."""
        raw = await self._read_raw_control()
        if raw is None:
            return
        view = ControlView.from_bson(raw)
        holding = {lease.owner for lease in view.leases}
        cutoff = self._clock() - FORGET_AFTER
        forgotten = {
            f"workers.{owner}": ""
            for owner, expires_at in view.expiry.items()
            if owner not in holding and expires_at is not None and expires_at < cutoff
        }
        if forgotten:
            await self._update_control({"$unset": forgotten})

    async def heartbeat(self, progress: WorkerProgress | None = None) -> None:
        """Keep this worker's leases alive; ``progress`` is shown by ``embedder status``."""
        now = self._clock()
        beat = Heartbeat.of(self._process, now, now + self._ttl, progress)
        await self._update_control({"$set": {f"workers.{self.owner}": beat.to_bson()}})

    async def leave(self) -> None:
        """Forget this worker; its leases, if any remain, expire at once for others."""
        await self._update_control({"$unset": {f"workers.{self.owner}": ""}})

    # --- claiming ---------------------------------------------------------------------------

    async def claim(self) -> Claim | None:
        """The next run of pending docs under a new lease, or None when none is free now.

        The scan position is local until a claim succeeds: passing leased ranges and the end
        of a pass writes nothing, and the claim's compare-and-set records where it got to.
        """
        view = self._view or await self._read_control()
        self._view = None
        if view.paused:
            return None
        for lease in view.expired_leases(self._clock()):
            taken = await self._take_over(lease)
            if taken is not None:
                return taken
        for lease in view.leases:
            # Ours but unknown: a claim whose answer was lost to a connection failure.
            if lease.owner == self.owner and lease.id not in self._held:
                adopted = await self._adopt(lease)
                if adopted is not None:
                    return adopted
        position, wrapped = view.cursor, False
        for _ in range(10_000):
            candidates = await self._pending_after(position)
            if not candidates:
                if position is None or wrapped:
                    await self._refuse_unpageable_ids()
                    return None
                # End of a pass: start again from the beginning (cheap; the index holds
                # pending docs only). Docs inserted behind the cursor are found this way.
                position, wrapped = None, True
                continue
            plan = plan_claim([d["_id"] for d in candidates], view.leases)
            if not plan.ids:
                position = plan.cursor
                continue
            claimed = await self._try_claim(view, plan, candidates, new_pass=wrapped)
            if claimed is not None:
                return claimed
            # Another worker changed the control document first: start from its state.
            view = await self._read_control()
            position, wrapped = view.cursor, False
        raise QueueError("claim made no progress after 10,000 attempts")

    async def _try_claim(
        self,
        view: ControlView,
        plan: ClaimPlan,
        candidates: list[dict[str, Any]],
        *,
        new_pass: bool,
    ) -> Claim | None:
        lease = Lease(uuid.uuid4().hex, plan.ids[0], plan.ids[-1], self.owner)
        update: dict[str, Any] = {
            "$set": {"cursor": plan.cursor},
            "$push": {"leases": lease.to_bson()},
        }
        if new_pass:
            update["$inc"] = {"passes": 1}
        if not await self._compare_and_set(view, update):
            return None
        self._held.add(lease.id)
        assert self._view is not None  # the document after our write
        documents = candidates[plan.start : plan.start + len(plan.ids)]
        return Claim(lease, documents, taken_over=False, seq=self._view.version)

    async def _take_over(self, lease: Lease) -> Claim | None:
        now = self._clock()
        dead = lease.owner
        query = {
            "_id": self.spec.key,
            "leases": {"$elemMatch": {"id": lease.id, "owner": dead}},
            "$or": [
                {f"workers.{dead}": {"$exists": False}},
                {f"workers.{dead}.expires_at": {"$lt": now}},
            ],
        }
        won = await self._find_and_update(
            query, {"$set": {"leases.$.owner": self.owner}, "$inc": {"version": 1}}
        )
        if won is None:
            return None  # another worker took it first, or its owner came back
        log.warning(
            "taking over lease %s [%r..%r] of worker %s", lease.id, lease.lo, lease.hi, dead
        )
        return await self._adopt(Lease(lease.id, lease.lo, lease.hi, self.owner), won["version"])

    async def _adopt(self, lease: Lease, seq: int | None = None) -> Claim | None:
        """Work on a lease now ours: only its docs still pending are redone, a claim's worth
        at a time, under a fresh claim sequence so the redone rows outrank any earlier ones.

        A lease can hold more pending docs than one claim (a dead worker's larger claim size,
        docs re-queued into its range). Then the lease is cut after the first page and the
        rest of its range becomes a new lease of this worker, which its next claim adopts:
        a huge range is never read at once, and no other worker can take any of it.
        """
        if seq is None:
            issued = await self._find_and_update({"_id": self.spec.key}, {"$inc": {"version": 1}})
            seq = int(issued["version"]) if issued else 0
        self._held.add(lease.id)
        documents = await self._pending(
            Bound(lease.lo, inclusive=True), Bound(lease.hi, inclusive=True), self._claim_size + 1
        )
        if not documents:
            log.info("lease %s [%r..%r]: no docs still pending", lease.id, lease.lo, lease.hi)
            await self.release([lease])
            return None
        if len(documents) > self._claim_size:
            rest_lo = documents[self._claim_size]["_id"]
            documents = documents[: self._claim_size]
            cut = await self._split(lease, documents[-1]["_id"], rest_lo)
            if cut is None:
                return None
            lease = cut
        log.info(
            "lease %s [%r..%r]: redoing %d docs still pending",
            lease.id,
            lease.lo,
            lease.hi,
            len(documents),
        )
        return Claim(lease, documents, taken_over=True, seq=seq)

    async def _split(self, lease: Lease, hi: Any, rest_lo: Any) -> Lease | None:
        """Cut ``lease`` to end at ``hi``; [``rest_lo``, its old end] becomes a new lease of
        this worker (one atomic write). None if the lease is no longer ours."""
        rest = Lease(uuid.uuid4().hex, rest_lo, lease.hi, self.owner)
        # An update pipeline: set one element's hi and append another in a single write (an
        # update document cannot both $set an element and $push to the same array). Values
        # are $literal: an id string starting with "$" is not a field path.
        cut = {
            "$map": {
                "input": "$leases",
                "in": {
                    "$cond": [
                        {"$eq": ["$$this.id", lease.id]},
                        {"$mergeObjects": ["$$this", {"hi": {"$literal": hi}}]},
                        "$$this",
                    ]
                },
            }
        }
        raw = await self._find_and_update(
            {"_id": self.spec.key, "leases": {"$elemMatch": {"id": lease.id, "owner": self.owner}}},
            [{"$set": {"leases": {"$concatArrays": [cut, [{"$literal": rest.to_bson()}]]}}}],
        )
        if raw is None:
            self._held.discard(lease.id)
            log.warning("lease %s is no longer ours; leaving it", lease.id)
            return None
        self._view = ControlView.from_bson(raw)  # the next claim adopts the rest at once
        return Lease(lease.id, lease.lo, hi, self.owner)

    async def _pending_after(self, cursor: Any) -> list[dict[str, Any]]:
        return await self._pending(after(cursor), None, self._claim_size)

    async def _pending(
        self, lower: Bound | None, upper: Bound | None, limit: int
    ) -> list[dict[str, Any]]:
        """The first ``limit`` pending docs of an ``_id`` range, read a BSON type at a time."""

        async def read(clause: dict[str, Any], n: int) -> list[dict[str, Any]]:
            return await self._find(self.spec.pending_query(clause), limit=n)

        return await read_range(read, limit, lower, upper)

    async def _refuse_unpageable_ids(self) -> None:
        """A pending doc whose ``_id`` type no range reaches would wait forever: say so."""
        found = await self._find(self.spec.pending_query(unsupported_clause()), limit=1)
        if found:
            doc_id = found[0]["_id"]
            try:
                id_type(doc_id)
            except ConfigurationError as exc:
                raise ConfigurationError(f"doc {doc_id!r}: {exc}") from None

    async def _find(self, query: Mapping[str, Any], *, limit: int) -> list[dict[str, Any]]:
        projection = {"_id": 1, self.spec.text_field: 1}

        async def read() -> list[dict[str, Any]]:
            cursor = self._docs.find(query, projection).sort("_id", 1).hint(self.spec.index_name)
            return await cursor.limit(limit).to_list()

        return await self._retry("reading pending docs", read)

    async def release(self, leases: Sequence[Lease]) -> None:
        """Drop finished leases, all in one write."""
        if leases:
            ids = [lease.id for lease in leases]
            await self._update_control(
                {"$pull": {"leases": {"id": {"$in": ids}, "owner": self.owner}}}
            )
            self._held.difference_update(ids)

    async def pending_count(self) -> int:
        """Docs waiting, counted on the work-queue index (no collection scan)."""
        count = await self._retry(
            "counting pending docs",
            lambda: self._docs.count_documents(
                self.spec.pending_query(), hint=self.spec.index_name
            ),
        )
        return int(count)

    async def done_count(self) -> int:
        """Docs marked done, counted on the monitoring index."""
        count = await self._retry(
            "counting done docs",
            lambda: self._docs.count_documents(
                done_query(self.spec.target_field), hint=self.spec.done_index_name
            ),
        )
        return int(count)

    async def paused(self) -> bool:
        view = await self._read_control()
        self._view = view  # the next claim starts from this fresh state
        return view.paused

    async def others_hold_leases(self) -> bool:
        view = await self._read_control()
        return bool(view.leases_of_others(self.owner))

    async def leases_awaited(self) -> list[AwaitedLease]:
        """Leases of other workers that are gone or silent: nothing else will free their
        docs until the lease expires and a worker takes it over."""
        raw = await self._read_raw_control()
        if raw is None:
            return []
        now = self._clock()
        workers = raw.get("workers") or {}
        awaited = []
        for lease in ControlView.from_bson(raw).leases_of_others(self.owner):
            beat = Heartbeat.from_bson(workers.get(lease.owner) or {})
            state = beat.life(now)
            if state is not Life.ALIVE and beat.expires_at is not None:
                awaited.append(AwaitedLease(lease, state, beat.expires_at))
        return awaited

    # --- marking ----------------------------------------------------------------------------

    async def mark(
        self,
        done_ids: Sequence[Any],
        mark: DoneMark | None,
        failed: Sequence[tuple[Any, str]],
        text_hashes: Sequence[bytes] | None = None,
    ) -> int:
        """Mark docs done (their vectors are durable) and failed ones with their reason.

        One bulk write. The ``target: null`` condition makes marking idempotent: a doc redone
        after a crash is never marked twice. Returns how many docs this call marked. With
        ``text_hashes`` each done doc's mark keeps the hash of the text it was embedded from
        (one update per doc rather than one per chunk), so a changed text can be found.
        """
        now = self._clock()
        target = self.spec.target_field
        ops: list[UpdateMany | UpdateOne] = []
        if done_ids and text_hashes is not None:
            assert mark is not None
            for doc_id, digest in zip(done_ids, text_hashes, strict=True):
                ops.append(_mark_if_unmarked(doc_id, target, mark.hashing(digest).to_bson(now)))
        elif done_ids:
            assert mark is not None
            value = mark.to_bson(now)
            for start in range(0, len(done_ids), _MARK_CHUNK):
                chunk = list(done_ids[start : start + _MARK_CHUNK])
                ops.append(
                    UpdateMany({"_id": {"$in": chunk}, target: None}, {"$set": {target: value}})
                )
        for doc_id, reason in failed:
            ops.append(_mark_if_unmarked(doc_id, target, FailedMark(reason).to_bson(now)))
        if not ops:
            return 0
        what = f"marking {len(done_ids)} done and {len(failed)} failed docs"
        result = await self._retry(what, lambda: self._docs.bulk_write(ops, ordered=False))
        return result.modified_count

    # --- control document ---------------------------------------------------------------------

    async def _read_raw_control(self) -> dict[str, Any] | None:
        return await self._retry(
            "reading the control document", lambda: self._control.find_one({"_id": self.spec.key})
        )

    async def _read_control(self) -> ControlView:
        raw = await self._read_raw_control()
        if raw is None:
            raise QueueError(f"control document {self.spec.key!r} is missing; was the queue reset?")
        return ControlView.from_bson(raw)

    async def _compare_and_set(self, view: ControlView, update: dict[str, Any]) -> bool:
        update = {**update, "$inc": {**update.get("$inc", {}), "version": 1}}
        raw = await self._find_and_update({"_id": self.spec.key, "version": view.version}, update)
        if raw is None:
            return False
        # The answer is the document after our change: the next claim starts from it.
        self._view = ControlView.from_bson(raw)
        return True

    async def _find_and_update(
        self, query: Mapping[str, Any], update: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> Mapping[str, Any] | None:
        return await self._retry(
            "updating the control document",
            lambda: self._control.find_one_and_update(
                query, update, return_document=ReturnDocument.AFTER
            ),
        )

    async def _update_control(self, update: Mapping[str, Any]) -> None:
        await self._retry(
            "updating the control document",
            lambda: self._control.update_one({"_id": self.spec.key}, update),
        )


# A new control document's version (claim_seq) starts from the MongoDB server's clock in
# milliseconds times this: a document deleted and recreated (a queue reset by hand, a restore)
# starts above every sequence the old one issued, unless it issued this many claims per
# millisecond of its life, so a later claim's rows still outrank earlier ones.
_SEQ_PER_MS = 1000


async def create_control(control: AsyncCollection[dict[str, Any]], key: str) -> None:
    """Create the queue's control document unless it exists: the one place that does.

    Its first version comes from the server's clock (``hello``'s ``localTime``), not this
    host's: sequences are issued by MongoDB alone. An existing document is left as it is.
    """
    hello = await control.database.client.admin.command("hello")
    local_time: dt.datetime = hello["localTime"]
    if local_time.tzinfo is None:  # a client without tz_aware: BSON dates are UTC
        local_time = local_time.replace(tzinfo=dt.UTC)
    fresh = {
        "_id": key,
        "version": int(local_time.timestamp() * 1000) * _SEQ_PER_MS,
        "cursor": None,
        "passes": 0,
        "leases": [],
        "workers": {},
    }
    with contextlib.suppress(DuplicateKeyError):
        await control.insert_one(fresh)


async def set_paused(
    client: AsyncMongoClient[dict[str, Any]], spec: QueueSpec, *, paused: bool, by: str
) -> bool:
    """Pause or resume a queue for every worker; True when this changed its state.

    Bumping the version makes any claim in progress fail its compare-and-set and read the new
    state, so workers stop claiming at their next claim.
    """
    control = client[spec.database][spec.control_collection]
    update = {
        "$set": {"paused": paused, "paused_by" if paused else "resumed_by": by},
        "$inc": {"version": 1},
    }
    for _ in range(3):  # the document deleted between creating and updating it: again
        await create_control(control, spec.key)
        before = await control.find_one_and_update(
            {"_id": spec.key}, update, return_document=ReturnDocument.BEFORE
        )
        if before is not None:
            return bool(before.get("paused", False)) != paused
    raise QueueError(f"control document {spec.key!r} keeps disappearing; is a reset running?")


def _mark_if_unmarked(doc_id: Any, target: str, value: Mapping[str, Any]) -> UpdateOne:
    """Set ``target`` to ``value`` unless the doc already has a mark: the same outcome as the
    filter ``{_id, target: null}``, and no write (nothing modified) for a doc marked before.

    The condition sits in an update pipeline on an ``_id``-only filter: a point lookup on every
    server (mongoeco scans its collection for ``{_id, target: null}``, 50 ms a doc at 3,000)."""
    keep_or_set = {"$ifNull": [f"${target}", {"$literal": dict(value)}]}
    return UpdateOne({"_id": doc_id}, [{"$set": {target: keep_or_set}}])

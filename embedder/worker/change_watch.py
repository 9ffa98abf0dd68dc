"""Re-queueing docs whose text changes after they were embedded, while the worker runs.

On a replica set (or sharded cluster) a MongoDB change stream reports updates and
replacements as they happen; a doc whose text field changed and whose mark holds another text
hash is re-queued at once. The stream's resume token is kept in the queue's control document,
so a restarted worker carries on where it stopped. Without change streams (a standalone
server) the watcher says so and falls back to polling: passes over the embedded docs' text
hashes in ``_id`` order, a bounded batch at a time (what ``embedder requeue --changed-text``
does in one go), a new pass every poll interval.

A text edited while its doc is in flight (claimed, not yet marked) is caught too: every mark
names the hash of the text that was embedded. The polling pass compares it with the current
text like any other; on the stream, the edit's own event finds the doc not done yet and does
nothing, but marking the doc is itself an update event, and that one is checked the same way
(the looked-up doc: is its current text the one its mark names?). Nothing is kept in memory
between events, and the resume token is saved only past events already handled, so a crash
replays what was not handled.

MongoDB outages are waited out like every other queue operation (embedder.queue.retry): the
stream re-opens where it stopped; a polling step is retried. Past the outage bound, or on an
error that is not an outage, ``run`` raises, and the worker stops with that error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.errors import OperationFailure, PyMongoError

from embedder.errors import ConfigurationError, QueueError
from embedder.ops import requeue as requeuing
from embedder.queue.connection import scrub
from embedder.queue.marks import DoneMark, done_query, read_mark, still_hashed
from embedder.queue.retry import MongoRetry, transient
from embedder.queue.spec import QueueSpec
from embedder.worker.documents import reading_options, to_doc

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChangeWatchSettings:
    # Where change streams are not available: seconds between polling passes.
    poll_interval_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.poll_interval_s > 0:
            raise ConfigurationError(
                f"changes_poll_interval_s must be positive, not {self.poll_interval_s}"
            )


_SAVE_TOKEN_EVERY_S = 5.0
_SCAN_BATCH = 1000  # embedded docs checked per polling step
_BATCH_PAUSE_S = 0.2  # between steps of one pass: bounded load on MongoDB
_HISTORY_LOST = 286  # ChangeStreamHistoryLost: the token is older than the oplog


class ChangeWatcher:
    def __init__(
        self,
        client: AsyncMongoClient[dict[str, Any]],
        spec: QueueSpec,
        *,
        poll_interval_s: float = 60.0,
        retry: MongoRetry | None = None,
    ) -> None:
        self._spec = spec
        database = client.get_database(
            spec.database, codec_options=reading_options(client.codec_options)
        )
        self._docs = database[spec.collection]
        self._control = client[spec.database][spec.control_collection]
        self._poll_interval_s = poll_interval_s
        self._retry = retry or MongoRetry()
        self._token: Mapping[str, Any] | None = None  # past the last event handled
        self.requeued = 0
        self._scan_after: Any = None  # where the polling scan goes on from

    async def run(self) -> None:
        """Watch until an error that is not an outage, or an outage past the bound."""
        try:
            await self._stream()
        except OperationFailure as exc:  # the server refused the stream
            if exc.code == _HISTORY_LOST:
                log.warning("change stream history lost; scanning for changed texts once")
                await self._forget_token()
                await self._scan_all()
                await self.run()
                return
            log.warning(
                "change streams are not available here (%s): MongoDB offers them on replica "
                "sets only. Falling back to polling: embedded docs' text hashes are checked in "
                "batches of %d, a pass every %.1f s",
                scrub(str(exc.details.get("errmsg") if exc.details else exc)),
                _SCAN_BATCH,
                self._poll_interval_s,
            )
            while True:
                await self._retry("scanning for changed texts", self._scan)
                # Between passes the poll interval; within one, a short breath per batch.
                done = self._scan_after is None
                await asyncio.sleep(self._poll_interval_s if done else _BATCH_PAUSE_S)

    async def _stream(self) -> None:
        """Follow the change stream; a broken one (an outage, an election) is re-opened past
        the last event handled, as long as opening succeeds within the outage bound."""
        while True:
            try:
                stream = await self._retry("opening a change stream", self._open)
            except QueueError as exc:
                refused = exc.__cause__
                if isinstance(refused, OperationFailure) and not transient(refused):
                    raise refused from None  # no change streams here, or history lost
                raise
            try:
                await self._follow(stream)
            except PyMongoError as exc:
                if not transient(exc):
                    raise
                log.warning(
                    "the change stream broke (%s); re-opening it where it stopped", scrub(str(exc))
                )
            finally:
                await stream.close()

    async def _open(self) -> AsyncChangeStream[dict[str, Any]]:
        token = self._token
        if token is None:
            control = await self._control.find_one({"_id": self._spec.key}, {"change_stream": 1})
            token = ((control or {}).get("change_stream") or {}).get("token")
        pipeline = [{"$match": {"operationType": {"$in": ["update", "replace"]}}}]
        stream = await self._docs.watch(pipeline, full_document="updateLookup", resume_after=token)
        log.info(
            "watching %s for changed texts with a change stream%s",
            self._spec.collection,
            " (resumed)" if token else "",
        )
        return stream

    async def _follow(self, stream: AsyncChangeStream[dict[str, Any]]) -> None:
        saved_at = asyncio.get_running_loop().time()
        while stream.alive:
            change = await stream.try_next()
            if change is not None:
                await self.handle(change)
            # Only now past this event: a crash before this line replays it.
            self._token = stream.resume_token or self._token
            now = asyncio.get_running_loop().time()
            if self._token is not None and now - saved_at >= _SAVE_TOKEN_EVERY_S:
                await self._save_token(self._token)
                saved_at = now

    async def handle(self, change: Mapping[str, Any]) -> bool:
        """One change event (with its full document looked up): re-queue the doc if its
        current text is not the one it was embedded from; True when it was re-queued.

        Two kinds of event are checked: an edit of the text, and the doc being marked (our own
        mark), which catches an edit made while the doc was in flight: that edit's event found
        the doc not done yet, and its mark names the text that was embedded."""
        document = change.get("fullDocument")
        if self.text_changed(change):
            return await self._requeue_if_changed(document)
        if self.marked(change):
            return await self._requeue_if_changed(document, only_if_hashed=True)
        return False

    def marked(self, change: Mapping[str, Any]) -> bool:
        """Whether an event writes the target field (a worker marking the doc)."""
        description = change.get("updateDescription") or {}
        target = self._spec.target_field
        return any(
            key == target or key.startswith(target + ".")
            for key in description.get("updatedFields") or {}
        )

    def text_changed(self, change: Mapping[str, Any]) -> bool:
        """Whether an event touches the text field (our own marks never do)."""
        if change.get("operationType") == "replace":
            return True
        description = change.get("updateDescription") or {}
        touched = [
            *(description.get("updatedFields") or {}),
            *(description.get("removedFields") or []),
        ]
        field = self._spec.text_field
        return any(
            key == field or field.startswith(key + ".") or key.startswith(field + ".")
            for key in touched
        )

    async def _requeue_if_changed(
        self, document: Mapping[str, Any] | None, *, only_if_hashed: bool = False
    ) -> bool:
        if document is None:  # deleted since: nothing to re-queue
            return False
        target = self._spec.target_field
        mark = read_mark(document.get(target))
        if not isinstance(mark, DoneMark):
            # Not done (in flight, or pending): its mark, when it comes, is checked then.
            return False
        stored = mark.text_hash
        if stored is None and only_if_hashed:
            return False  # a mark that names no text: nothing to compare with
        now = to_doc(document, self._spec.text_field)
        if stored is not None and not requeuing.embedded_text_changed(now, stored):
            return False  # the text it was embedded from, or written again the same
        condition: dict[str, Any] = {"_id": document["_id"], **done_query(target)}
        if stored is not None:
            condition.update(still_hashed(target, stored))
        result = await self._retry(
            "re-queueing a changed text",
            lambda: self._docs.update_one(condition, {"$unset": {target: ""}}),
        )
        if not result.modified_count:
            return False
        self.requeued += 1
        log.info("doc %r: its text changed; re-queued", document["_id"])
        return True

    async def _scan(self) -> None:
        """One bounded batch of the scan, carrying on from the last one: a large collection
        is read a batch at a time, never whole at once. MongoDB errors propagate: the caller
        retries outages (a batch is safe to repeat)."""
        report = requeuing.RequeueReport("changed texts", dry_run=False)
        self._scan_after = await requeuing.changed_text_batch(
            self._docs, self._spec, report, _SCAN_BATCH, after=self._scan_after
        )
        self.requeued += report.requeued
        if report.requeued:
            log.info("re-queued %d docs whose text changed", report.requeued)

    async def _scan_all(self) -> None:
        self._scan_after = None
        while True:
            await self._scan()
            if self._scan_after is None:
                return

    async def _save_token(self, token: Mapping[str, Any]) -> None:
        await self._control.update_one(
            {"_id": self._spec.key}, {"$set": {"change_stream.token": token}}
        )

    async def _forget_token(self) -> None:
        self._token = None
        await self._control.update_one({"_id": self._spec.key}, {"$unset": {"change_stream": ""}})

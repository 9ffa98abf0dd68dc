"""Texts edited while their doc is in flight, and a change watcher that loses MongoDB (issue 12,
case 4). The doc's final vector must be that of its current text; a watcher that can no longer
watch must stop the worker loudly."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pymongo import AsyncMongoClient

from embedder.identity import text_hash
from embedder.queue.spec import QueueSpec
from embedder.worker.change_watch import ChangeWatcher
from tests.support import corpus as corpora
from tests.support.mongo import RestartableMongo, needs_own_mongo
from tests.support.servers import FaultTei
from tests.support.worker import Workspace, assert_complete, marks, seed, wait_until

TARGET = "gemma_embedded_768"
HELD_S = 3.0  # how long the endpoint holds each request: the window to edit a text in


async def _edit_in_flight(
    ws: Workspace,
    mongo: AsyncMongoClient[dict[str, Any]],
    tei: FaultTei,
    proc: subprocess.Popen[bytes],
    *,
    doc_id: Any,
    text: str,
) -> None:
    """Edit ``doc_id``'s text once the worker's first request (after its probe) is held."""
    await ws.wait_for(proc, lambda: tei.stats()["requests"] >= 2, "a request in flight")
    await mongo[ws.database]["tweets"].update_one({"_id": doc_id}, {"$set": {"text": text}})


async def _mark_of(mongo: AsyncMongoClient[dict[str, Any]], queue: QueueSpec, doc_id: Any) -> Any:
    return (await marks(mongo, queue))[doc_id]


async def test_an_edit_made_in_flight_is_requeued_from_the_stream(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    """The stream path, fed the events a replica set sends (mongoeco has no change streams):
    the edit's event comes while the doc is in flight, the mark's event after it."""
    tei = tei_factory("--faults", f'{{"delay_s": {HELD_S}, "after": 1}}')
    corpus = corpora.tweets(20)
    queue = await seed(mongo, ws.database, corpus)
    tweets = mongo[ws.database]["tweets"]
    watcher = ChangeWatcher(mongo, queue)
    edited = list(corpus.eligible)[3]
    old, new = corpus.eligible[edited], "this text was edited while it was being embedded"

    proc = ws.popen([tei.url], "--once")
    await _edit_in_flight(ws, mongo, tei, proc, doc_id=edited, text=new)
    # The edit's event: the doc is not done yet (its mark comes later).
    edit_event = {
        "operationType": "update",
        "updateDescription": {"updatedFields": {"text": new}, "removedFields": []},
        "fullDocument": await tweets.find_one({"_id": edited}),
    }
    assert not await watcher.handle(edit_event)
    assert await asyncio.to_thread(proc.wait, 120) == 0, ws.log()
    mark = await _mark_of(mongo, queue, edited)
    assert mark["text_hash"] == text_hash(old), "the edit should have landed in flight"

    # The mark's own event, with the doc looked up as a replica set does (updateLookup).
    mark_event = {
        "operationType": "update",
        "updateDescription": {"updatedFields": {TARGET: mark}, "removedFields": []},
        "fullDocument": await tweets.find_one({"_id": edited}),
    }
    assert await watcher.handle(mark_event), "the mark names the old text: re-queue the doc"
    assert await _mark_of(mongo, queue, edited) is None
    # Marks of docs whose text did not change are left alone.
    other = list(corpus.eligible)[4]
    other_event = {
        **mark_event,
        "fullDocument": await tweets.find_one({"_id": other}),
    }
    assert not await watcher.handle(other_event)

    assert await asyncio.to_thread(ws.run, [tei.url], "--once", log="again.log") == 0
    corpus.eligible[edited] = new
    rows = ws.latest_rows()
    np.testing.assert_allclose(rows[edited], corpora.expected_vectors([new], 64)[0], atol=1e-5)
    assert (await _mark_of(mongo, queue, edited))["text_hash"] == text_hash(new)
    assert_complete(rows, await marks(mongo, queue), corpus)


async def test_an_edit_made_in_flight_is_requeued_by_polling(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    """The polling path (what mongoeco offers), with a real running worker."""
    tei = tei_factory("--faults", f'{{"delay_s": {HELD_S}, "after": 1}}')
    corpus = corpora.tweets(20)
    queue = await seed(mongo, ws.database, corpus)
    edited = list(corpus.eligible)[3]
    new = "this text was edited while it was being embedded"

    proc = ws.popen(
        [tei.url],
        *("--watch-changes", "--changes-poll-interval", "0.5", "--shard-age", "0.5"),
    )
    try:
        await _edit_in_flight(ws, mongo, tei, proc, doc_id=edited, text=new)
        tei.set_faults()

        async def reembedded() -> bool:
            mark = await _mark_of(mongo, queue, edited)
            return bool(mark) and mark.get("text_hash") == text_hash(new)

        await wait_until(reembedded, what="the edited doc embedded again", within=90)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
    assert code == 0, ws.log()
    assert "re-queued" in ws.log()
    corpus.eligible[edited] = new
    rows = ws.latest_rows()
    np.testing.assert_allclose(rows[edited], corpora.expected_vectors([new], 64)[0], atol=1e-5)
    assert_complete(rows, await marks(mongo, queue), corpus)


@needs_own_mongo
async def test_a_watcher_that_loses_mongodb_for_good_fails_the_worker(
    own_mongo: RestartableMongo,
    tmp_path: Path,
    tei_factory: Callable[..., FaultTei],
) -> None:
    """Only the watcher talks to MongoDB here (the idle worker waits an hour between looks
    for work): when MongoDB goes away for longer than the outage bound, the worker must exit
    non-zero naming the watcher, not go on without watching."""
    tei = tei_factory()
    corpus = corpora.tweets(20, id_kind="string")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(own_mongo.uri, tz_aware=True)
    try:
        queue = await seed(client, "watch", corpus)
    finally:
        await client.close()
    ws = Workspace(own_mongo.uri, "watch", tmp_path)
    proc = ws.popen(
        [tei.url],
        *("--watch-changes", "--changes-poll-interval", "0.2", "--poll-interval", "3600"),
        *("--mongo-outage-timeout", "2", "--shard-age", "0.5"),
    )
    watched = AsyncMongoClient[dict[str, Any]](own_mongo.uri, tz_aware=True)

    async def idle() -> bool:
        """Every doc marked and every lease released: the worker waits for new work."""
        assert proc.poll() is None, ws.log()
        control = await watched["watch"]["embedder_control"].find_one({})
        unmarked = await watched["watch"]["tweets"].count_documents(queue.pending_query())
        return unmarked == 0 and control is not None and control["leases"] == []

    try:
        await ws.wait_for(proc, lambda: "Falling back to polling" in ws.log(), "the watcher")
        await wait_until(idle, what="the worker idle")
        await watched.close()
        own_mongo.stop()
        code = await asyncio.to_thread(proc.wait, 90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code != 0, ws.log()
    assert "watching for changed texts failed" in ws.log(), ws.log()
    assert "MongoDB unreachable for more than 2s" in ws.log(), ws.log()

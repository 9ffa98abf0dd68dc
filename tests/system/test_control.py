"""Operating a running queue: pause and resume, and texts that change after embedding."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import signal
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from pymongo import AsyncMongoClient

from embedder.identity import text_hash
from embedder.worker import change_watch as changes
from embedder.worker.change_watch import ChangeWatcher
from tests.support import corpus as corpora
from tests.support.servers import FaultTei, run_python
from tests.support.worker import Workspace, assert_complete, marks, seed, wait_until


async def done_count(mongo: AsyncMongoClient[dict[str, Any]], ws: Workspace) -> int:
    docs = mongo[ws.database]["tweets"]
    return await docs.count_documents({"gemma_embedded_768.status": {"$exists": True}})


def some_done(mongo: AsyncMongoClient[dict[str, Any]], ws: Workspace) -> Callable[[], Any]:
    async def check() -> bool:
        return await done_count(mongo, ws) > 0

    return check


async def test_pause_stops_every_worker_claiming_and_resume_lets_them_finish(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    tei = tei_factory()
    # The server holds every request but the two workers' start-up probes until the pause is
    # set: whatever this machine's speed, both are mid-run, holding claims, when it arrives.
    tei.set_faults(hold=True, delay_s=0.5, after=2)
    corpus = corpora.tweets(300)
    queue = await seed(mongo, ws.database, corpus)
    # A heartbeat every 0.5 s (a third of the lease TTL).
    extra = (
        *("--once", "--claim-size", "20", "--shard-rows", "20"),
        *("--concurrency", "1", "--lease-ttl", "1.5"),
    )
    workers = [ws.popen([tei.url], *extra, log=f"w{i}.log", summary=f"w{i}.json") for i in (0, 1)]
    await wait_until(lambda: tei.stats()["held"] >= 2, what="both workers' requests held")

    paused = run_python(ws.queue_command("pause"))
    assert paused.returncode == 0 and "paused" in paused.stdout, paused.stderr
    tei.set_faults(delay_s=0.5)
    await wait_until(some_done(mongo, ws), what="some docs done")
    # Within seconds every worker notices, finishes what it holds and claims nothing more.
    for log in ("w0.log", "w1.log"):
        await wait_until(
            functools.partial(lambda name: "queue is paused" in ws.log(name), log),
            what="pause seen",
        )
    control = mongo[ws.database]["embedder_control"]

    async def drained() -> bool:
        doc = await control.find_one({"_id": queue.key})
        return doc is not None and not doc["leases"]

    await wait_until(drained, what="leases released", within=30)
    status = run_python(ws.command("status", "--json"))
    assert json.loads(status.stdout)["paused"] is True, status.stderr
    held = await done_count(mongo, ws)
    assert held < len(corpus.eligible) + len(corpus.bad)
    drained_at = dt.datetime.now(dt.UTC)

    async def both_beat_paused_since() -> bool:
        doc = await control.find_one({"_id": queue.key})
        workers = list((doc or {}).get("workers", {}).values())
        return len(workers) == 2 and all(
            w.get("paused") and w["seen_at"] > drained_at for w in workers
        )

    # Each worker has lived through a heartbeat since, still paused, and claimed nothing.
    await wait_until(both_beat_paused_since, what="heartbeats of paused workers")
    assert await done_count(mongo, ws) == held
    assert all(w.poll() is None for w in workers), "--once workers wait while paused"

    resumed = run_python(ws.queue_command("resume"))
    assert resumed.returncode == 0 and "resumed" in resumed.stdout, resumed.stderr
    codes = await asyncio.to_thread(lambda: [w.wait(120) for w in workers])
    assert codes == [0, 0], ws.log("w0.log") + ws.log("w1.log")
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)


async def test_a_running_worker_requeues_and_reembeds_texts_that_change(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    tei = tei_factory()
    corpus = corpora.tweets(100)
    queue = await seed(mongo, ws.database, corpus)
    worker = ws.popen(
        [tei.url],
        *("--watch-changes", "--changes-poll-interval", "0.5", "--shard-rows", "10"),
        *("--shard-age", "0.5"),
    )
    try:
        everything = len(corpus.eligible) + len(corpus.bad)

        async def all_done() -> bool:
            return await done_count(mongo, ws) == everything

        await wait_until(all_done, what="all docs marked", within=120)
        log = ws.log()
        stream = "with a change stream" in log
        assert stream or "Falling back to polling" in log, log

        edited = list(corpus.eligible)[5]
        corpus.eligible[edited] = "this text was edited after it was embedded"
        tweets = mongo[ws.database]["tweets"]
        await tweets.update_one({"_id": edited}, {"$set": {"text": corpus.eligible[edited]}})

        async def reembedded() -> bool:
            state = (await marks(mongo, queue))[edited]
            return bool(state) and state.get("text_hash") == text_hash(corpus.eligible[edited])

        await wait_until(reembedded, what="the edited doc embedded again", within=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 60)
    rows = ws.latest_rows()
    expected = corpora.expected_vectors([corpus.eligible[edited]], 64)[0]
    np.testing.assert_allclose(rows[edited], expected, atol=1e-5)
    assert_complete(rows, await marks(mongo, queue), corpus)


async def test_change_events_requeue_only_docs_whose_text_changed(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    """What the change-stream watcher does with each event, fed the events a replica set
    would send (mongoeco has no change streams; the stream itself runs on a replica set)."""
    corpus = corpora.tweets(30)
    queue = await seed(mongo, ws.database, corpus)
    code = await asyncio.to_thread(ws.run, [tei_factory().url], "--once", "--store-text-hash")
    assert code == 0, ws.log()
    watcher = ChangeWatcher(mongo, queue)
    tweets = mongo[ws.database]["tweets"]
    ids = list(corpus.eligible)

    def update(fields: dict[str, Any], removed: list[str] | None = None) -> dict[str, Any]:
        return {
            "operationType": "update",
            "updateDescription": {"updatedFields": fields, "removedFields": removed or []},
        }

    # Events about other fields (our own marks among them) are not text changes.
    assert not watcher.text_changed(update({"gemma_embedded_768": {"status": "done"}}))
    assert not watcher.text_changed(update({"lang": "fr"}))
    assert watcher.text_changed(update({"text": "new"}))
    assert watcher.text_changed(update({}, removed=["text"]))
    assert watcher.text_changed({"operationType": "replace"})

    async def event(doc_id: Any) -> dict[str, Any]:
        return {**update({"text": "?"}), "fullDocument": await tweets.find_one({"_id": doc_id})}

    # The same text written again: nothing to do. A new text: re-queued, once.
    await tweets.update_one({"_id": ids[0]}, {"$set": {"text": corpus.eligible[ids[0]]}})
    assert not await watcher.handle(await event(ids[0]))
    assert (await marks(mongo, queue))[ids[0]]["status"] == "done"
    await tweets.update_one({"_id": ids[1]}, {"$set": {"text": "an edited text"}})
    edited = await event(ids[1])
    assert await watcher.handle(edited)
    assert not await watcher.handle(edited)
    assert (await marks(mongo, queue))[ids[1]] is None
    # A doc deleted before the lookup, and one not embedded yet, are left alone.
    assert not await watcher.handle({**update({"text": "?"}), "fullDocument": None})
    assert not await watcher.handle(
        {**update({"text": "?"}), "fullDocument": {"_id": "x", "text": "never embedded"}}
    )
    assert watcher.requeued == 1


async def test_changed_texts_are_found_among_ids_of_every_type(
    ws: Workspace,
    mongo: AsyncMongoClient[dict[str, Any]],
    tei_factory: Callable[..., FaultTei],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``requeue --changed-text`` and the polling watcher page ``_id`` a type at a time: a
    range predicate on one type never reaches the next (MongoDB's type bracketing)."""
    corpus = corpora.mixed_ids(20)
    queue = await seed(mongo, ws.database, corpus)
    tei = tei_factory()
    code = await asyncio.to_thread(
        ws.run, [tei.url], "--once", "--store-text-hash", "--claim-size", "10"
    )
    assert code == 0, ws.log()
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)
    tweets = mongo[ws.database]["tweets"]
    by_kind = [[i for i in corpus.eligible if isinstance(i, kind)] for kind in (int, str)]
    by_kind.append([i for i in corpus.eligible if not isinstance(i, (int, str))])

    async def edit(position: int) -> list[Any]:
        edited = [ids[position] for ids in by_kind]  # one doc of each type
        for doc_id in edited:
            await tweets.update_one({"_id": doc_id}, {"$set": {"text": f"edited {doc_id}"}})
        return edited

    edited = await edit(-1)  # the last of each type: a scan must walk every type to the end
    done = run_python(ws.queue_command("requeue", "--changed-text", "--batch-size", "7", "--json"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["requeued"] == 3, done.stdout
    state = await marks(mongo, queue)
    assert [state[i] for i in edited] == [None, None, None]

    # The polling watcher's pass (what it does without change streams), in small batches.
    monkeypatch.setattr(changes, "_SCAN_BATCH", 7)
    edited = await edit(-2)
    watcher = ChangeWatcher(mongo, queue)
    await watcher._scan_all()
    assert watcher.requeued == 3
    state = await marks(mongo, queue)
    assert [state[i] for i in edited] == [None, None, None]

"""The core pipeline end to end: MongoDB queue → TEI fleet → Parquet shards → marks."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from embedder.telemetry import Summary
from tests.support import corpus as corpora
from tests.support.servers import FaultTei, free_port
from tests.support.worker import Workspace, assert_complete, marks, seed, wait_until

DIM = 64


@pytest.mark.parametrize("id_kind", ["int", "objectid", "string"])
async def test_once_run_embeds_every_eligible_doc(
    ws: Workspace,
    mongo: AsyncMongoClient[dict[str, Any]],
    tei_factory: Callable[..., FaultTei],
    id_kind: str,
) -> None:
    tei = tei_factory("--dimension", str(DIM))
    corpus = corpora.tweets(400, id_kind=id_kind)
    queue = await seed(mongo, ws.database, corpus)

    code = await asyncio.to_thread(
        ws.run, [tei.url], "--once", "--claim-size", "150", "--shard-rows", "120"
    )

    assert code == 0, ws.log()
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)
    summary = ws.summary()
    assert summary["embedded"] == len(corpus.eligible)
    assert summary["failed"] == len(corpus.bad)
    assert summary["claimed"] == len(corpus.eligible) + len(corpus.bad)
    assert summary["shards"] >= 3
    assert not list(ws.shards.glob(".*")), "a temporary shard was left where readers look"


async def test_dotted_text_field(
    ws: Workspace,
    mongo: AsyncMongoClient[dict[str, Any]],
    tei: FaultTei,
    worker: Callable[..., Awaitable[Summary]],
) -> None:
    corpus = corpora.tweets(60, text_field="extended_tweet.full_text")
    queue = await seed(mongo, ws.database, corpus, text_field="extended_tweet.full_text")

    summary = await worker([tei.url], queue=queue)

    assert summary.embedded == len(corpus.eligible), summary
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)


async def test_two_workers_share_one_queue_without_overlap(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    tei = tei_factory("--dimension", str(DIM))
    # Slow answers and little prefetch: the run outlasts a worker's start-up, so both take part.
    tei.set_faults(delay_s=0.1)
    corpus = corpora.tweets(500)
    queue = await seed(mongo, ws.database, corpus)

    # Shards larger than the corpus: each worker ends holding leases whose docs sit in an
    # open shard, which it must commit when idle or both --once workers wait forever.
    extra = ("--once", "--claim-size", "20", "--concurrency", "1", "--shard-rows", "10000")
    first = ws.popen([tei.url], *extra, log="a.log", summary="a.json")
    second = ws.popen([tei.url], *extra, log="b.log", summary="b.json")
    codes = await asyncio.to_thread(lambda: (first.wait(180), second.wait(180)))

    assert codes == (0, 0), ws.log("a.log") + ws.log("b.log")
    a, b = ws.summary("a.json"), ws.summary("b.json")
    assert a["embedded"] > 0 and b["embedded"] > 0, "both workers should have taken part"
    assert a["embedded"] + b["embedded"] == len(corpus.eligible)
    assert ws.table().num_rows == len(corpus.eligible)  # rows in shards = eligible docs
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)


async def test_sigkill_mid_run_then_rerun_loses_nothing(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    tei = tei_factory("--dimension", str(DIM))
    tei.set_faults(delay_s=0.1)  # slow enough to be killed mid-run
    corpus = corpora.tweets(400)
    queue = await seed(mongo, ws.database, corpus)

    proc = ws.popen(
        [tei.url],
        "--once",
        "--claim-size",
        "50",
        "--shard-rows",
        "64",
        "--lease-ttl",
        "2",
        log="killed.log",
    )
    # Once some docs are marked (a shard appears a moment before its docs are marked).
    await wait_until(lambda: _some_done(mongo, queue), what="the first marked docs")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    state = await marks(mongo, queue)
    done_before = sum(1 for v in state.values() if v and v["status"] == "done")
    assert 0 < done_before < len(corpus.eligible), "the kill should land mid-run"

    tei.set_faults()
    code = await asyncio.to_thread(ws.run, [tei.url], "--once", "--lease-ttl", "2", log="rerun.log")

    assert code == 0, ws.log("rerun.log")
    ids = collections.Counter(ws.table()["_id"].to_pylist())
    # At-least-once: the docs of a shard made durable but not yet (wholly) marked when the
    # kill landed are redone; every doc is there, and no doc marked before the kill was
    # embedded again.
    assert set(ids) == {str(i) for i in corpus.eligible}
    marked_before = [str(i) for i, v in state.items() if v and v["status"] == "done"]
    assert all(ids[i] == 1 for i in marked_before), "docs marked before the kill were redone"
    assert_complete(ws.rows_allowing_repeats(), await marks(mongo, queue), corpus)
    assert ws.summary()["leases_taken_over"] >= 1


async def test_faulty_fleet_completes_and_reports_retries(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    healthy = tei_factory("--dimension", str(DIM))
    overloaded = tei_factory(
        "--dimension", str(DIM), "--faults", '{"fail_every": 2, "fail_status": 429}'
    )
    erroring = tei_factory(
        "--dimension", str(DIM), "--faults", '{"fail_every": 2, "fail_status": 500}'
    )
    dead = f"http://127.0.0.1:{free_port()}"
    corpus = corpora.tweets(300)
    queue = await seed(mongo, ws.database, corpus)

    urls = [dead, healthy.url, overloaded.url, erroring.url]
    code = await asyncio.to_thread(ws.run, urls, "--once", "--concurrency", "2")

    assert code == 0, ws.log()
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)
    summary = ws.summary()
    seen = summary["errors_by_kind"]
    # At the end of the queue a batch may go to a second endpoint and the slower attempt is
    # cancelled (embedder.worker.hedging): the answer it never read is not counted.
    assert 0 < seen.get("overloaded", 0) <= overloaded.stats()["faults_injected"]
    assert seen.get("server_error", 0) <= erroring.stats()["faults_injected"]
    assert summary["retries"] >= seen.get("overloaded", 0)
    assert "not answering" in ws.log()


async def test_rejected_input_is_narrowed_to_the_one_bad_doc(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    tei = tei_factory("--dimension", str(DIM), "--faults", '{"reject_containing": "POISON"}')
    corpus = corpora.tweets(100)
    poisoned = next(iter(corpus.eligible))
    corpus.docs[0]["text"] = "POISON pill"
    del corpus.eligible[poisoned]
    corpus.bad[poisoned] = "poisoned"
    queue = await seed(mongo, ws.database, corpus)

    code = await asyncio.to_thread(ws.run, [tei.url], "--once")

    assert code == 0, ws.log()
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)


async def test_sigterm_drains_and_marks_nothing_without_its_vector(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    tei = tei_factory("--dimension", str(DIM))
    tei.set_faults(delay_s=0.05)
    corpus = corpora.tweets(400)
    queue = await seed(mongo, ws.database, corpus)

    proc = ws.popen([tei.url], "--claim-size", "50", "--shard-rows", "64")
    await ws.wait_for(proc, ws.has_shard, "a shard")
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 60)

    assert code == 0, ws.log()
    rows = ws.rows()
    state = await marks(mongo, queue)
    done = {i for i, v in state.items() if v and v["status"] == "done"}
    assert done, "some docs should have been finished before the signal"
    assert done <= set(rows), "a doc was marked done without its vector on disk"
    assert set(rows) <= set(corpus.eligible)
    control = await mongo[ws.database]["embedder_control"].find_one({})
    assert control is not None and control["leases"] == [], "leases were not released"
    assert not list((ws.root / "hot").rglob("*.tmp"))


async def test_a_second_signal_exits_at_once_and_a_rerun_finishes(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    tei = tei_factory("--dimension", str(DIM))
    tei.set_faults(delay_s=2.0)  # requests in flight for a long time
    corpus = corpora.tweets(200)
    queue = await seed(mongo, ws.database, corpus)

    proc = ws.popen([tei.url], "--claim-size", "50", "--lease-ttl", "2", log="twice.log")
    await ws.wait_for(
        proc, lambda: "embedding" in ws.log("twice.log"), "the run to start", log="twice.log"
    )
    await wait_until(
        lambda: tei.stats()["requests"] >= 2, what="a request in flight"
    )  # after the probe
    proc.send_signal(signal.SIGTERM)
    await ws.wait_for(
        proc, lambda: "SIGTERM received" in ws.log("twice.log"), "the first signal", log="twice.log"
    )
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 10)

    assert code == 128 + signal.SIGTERM, ws.log("twice.log")
    assert time.monotonic() - started < 2.0, (
        "the second signal should not wait for requests in flight"
    )
    tei.set_faults()
    assert (
        await asyncio.to_thread(ws.run, [tei.url], "--once", "--lease-ttl", "2", log="rerun.log")
        == 0
    )
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)


async def _some_done(mongo: AsyncMongoClient[dict[str, Any]], queue: Any) -> bool:
    return (
        await mongo[queue.database][queue.collection].find_one({queue.status_path: "done"})
        is not None
    )

"""Whole runs of the worker against the queue: every id type, kills, refusals before any claim."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import pyarrow.parquet as pq
from pymongo import AsyncMongoClient

from embedder.identity import text_hash
from embedder.telemetry import Summary
from tests.support import corpus as corpora
from tests.support.servers import FaultTei, run_python
from tests.support.worker import Workspace, assert_complete, marks, seed, wait_until

Client = AsyncMongoClient[dict[str, Any]]


async def test_an_unwritable_output_dir_fails_before_any_claim(
    ws: Any, mongo: Client, tei: Any
) -> None:
    queue = await seed(mongo, ws.database, corpora.tweets(20))
    blocker = ws.root / "not-a-dir"
    blocker.write_text("a file where the output dir should be")
    args = ws.args([tei.url], "--once")
    args[args.index("--output-dir") + 1] = str(blocker / "shards")
    done = await asyncio.to_thread(run_python, args)
    assert done.returncode != 0
    assert str(blocker) in done.stderr
    control = await mongo[ws.database]["embedder_control"].find_one({"_id": queue.key})
    assert control is None, "nothing should have been claimed"


async def test_endpoints_serving_different_models_are_refused(
    ws: Any, mongo: Client, tei_factory: Any
) -> None:
    await seed(mongo, ws.database, corpora.tweets(10))
    one = tei_factory("--dimension", "64")
    other = tei_factory("--dimension", "64", "--model-seed", "1")  # same name, other weights
    done = await asyncio.to_thread(run_python, ws.args([one.url, other.url], "--once"))
    assert done.returncode != 0 and "endpoints serve different models" in done.stderr


async def test_once_embeds_docs_of_every_id_type(
    ws: Workspace, mongo: Client, tei: FaultTei, worker: Callable[..., Awaitable[Summary]]
) -> None:
    corpus = corpora.mixed_ids(300)
    queue = await seed(mongo, ws.database, corpus)
    summary = await worker([tei.url], claim_size=100)
    assert summary.embedded == len(corpus.eligible), summary
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)


async def test_a_killed_workers_lease_spanning_two_id_types_is_redone(
    ws: Workspace, mongo: Client, tei: FaultTei
) -> None:
    corpus = corpora.mixed_ids(30)  # 35 pending docs of each type
    queue = await seed(mongo, ws.database, corpus)
    tei.set_faults(delay_s=2)  # slow: the first worker is killed holding its first lease
    control = mongo[ws.database]["embedder_control"]

    async def spanning_lease() -> bool:
        doc = await control.find_one({"_id": queue.key})
        leases = (doc or {}).get("leases") or []
        return any(isinstance(x["lo"], int) and isinstance(x["hi"], str) for x in leases)

    extra = ("--claim-size", "50", "--lease-ttl", "2")
    doomed = ws.popen([tei.url], "--once", *extra, "--concurrency", "1", log="doomed.log")
    try:
        await wait_until(spanning_lease, what="a lease over ints and strings")
    finally:
        doomed.send_signal(signal.SIGKILL)
        await asyncio.to_thread(doomed.wait, 10)

    tei.set_faults()
    code = await asyncio.to_thread(
        ws.run, [tei.url], "--once", "--claim-size", "20", "--lease-ttl", "2", log="taker.log"
    )
    assert code == 0, ws.log("taker.log")
    assert ws.summary()["leases_taken_over"] >= 1
    assert_complete(ws.rows_allowing_repeats(), await marks(mongo, queue), corpus)


async def test_a_recreated_control_document_does_not_let_a_stale_row_win(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei: FaultTei
) -> None:
    """claim_seq is the control document's version. Recreate the control document (an
    operator clearing a stuck queue, a restore) and the versions start again at 0: a doc
    re-embedded for its edited text gets a lower claim_seq than its old row, and the
    consolidator keeps the old text's vector although the doc's mark names the new one."""
    corpus = corpora.tweets(40)
    queue = await seed(mongo, ws.database, corpus)
    assert await asyncio.to_thread(ws.run, [tei.url], "--once", "--claim-size", "4") == 0
    out = ws.root / "consolidated"
    assert (await asyncio.to_thread(ws.consolidate, out)).returncode == 0
    docs = mongo[ws.database][queue.collection]
    edited = list(corpus.eligible)[-1]
    await docs.update_one({"_id": edited}, {"$set": {"text": "an edited text"}})
    requeued = run_python(ws.queue_command("requeue", "--changed-text", "--json"))
    assert json.loads(requeued.stdout)["requeued"] == 1, requeued.stdout + requeued.stderr
    await mongo[ws.database][queue.control_collection].delete_one({"_id": queue.key})
    assert await asyncio.to_thread(ws.run, [tei.url], "--once", log="second.log") == 0
    assert (await asyncio.to_thread(ws.consolidate, out)).returncode == 0

    table = pq.read_table(out)
    row = [r for r in table.to_pylist() if r["_id"] == str(edited)]
    assert len(row) == 1
    assert row[0]["text_hash"] == text_hash("an edited text"), "the old text's row was kept"

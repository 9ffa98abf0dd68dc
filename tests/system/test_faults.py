"""Faults during a run (issue 7): MongoDB and endpoints going away, hanging, talking garbage.

Each test runs the whole pipeline (``embed_tweets.py``) against real servers on loopback and
checks the promise: every eligible doc ends embedded exactly once, or listed with its reason.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from pymongo import AsyncMongoClient

from tests.support import corpus as corpora
from tests.support.mongo import RestartableMongo, needs_own_mongo
from tests.support.servers import ROOT, FaultTei, free_port, start
from tests.support.worker import Workspace, assert_complete, marks, seed, wait_until

DIM = 64


async def _client_marks(uri: str, queue: Any) -> dict[Any, Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    try:
        return await marks(client, queue)
    finally:
        await client.close()


async def _seeded(uri: str, corpus: corpora.Corpus) -> Any:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    try:
        return await seed(client, "faults", corpus)
    finally:
        await client.close()


@dataclass
class SlowRun:
    """150 docs on a restartable MongoDB and a slow endpoint: long enough to break in on."""

    mongo: RestartableMongo
    tei: FaultTei
    corpus: corpora.Corpus
    queue: Any
    ws: Workspace
    args: tuple[str, ...] = (
        "--once",
        "--claim-size",
        "10",
        "--shard-rows",
        "20",
        "--concurrency",
        "1",
    )

    async def marks(self) -> dict[Any, Any]:
        return await _client_marks(self.mongo.uri, self.queue)


@pytest.fixture
async def slow_run(
    own_mongo: RestartableMongo, tmp_path: Path, tei_factory: Callable[..., FaultTei]
) -> SlowRun:
    tei = tei_factory("--dimension", str(DIM))
    tei.set_faults(delay_s=0.3)
    corpus = corpora.tweets(
        150, id_kind="string"
    )  # mongoeco's SQLite engine is slow with huge ints
    queue = await _seeded(own_mongo.uri, corpus)
    return SlowRun(own_mongo, tei, corpus, queue, Workspace(own_mongo.uri, "faults", tmp_path))


@needs_own_mongo
async def test_mongodb_restart_mid_run_is_waited_out(slow_run: SlowRun) -> None:
    run = slow_run
    proc = run.ws.popen([run.tei.url], *run.args)
    await run.ws.wait_for(proc, run.ws.has_shard, "a shard")
    run.mongo.stop()
    await wait_until(
        lambda: "MongoDB unreachable" in run.ws.log(), what="the worker to notice the outage"
    )
    run.mongo.start()
    code = await asyncio.to_thread(proc.wait, 180)

    assert code == 0, run.ws.log()
    assert "MongoDB unreachable" in run.ws.log() and "MongoDB reachable again" in run.ws.log()
    assert_complete(run.ws.rows(), await run.marks(), run.corpus)


@needs_own_mongo
async def test_mongodb_gone_too_long_exits_non_zero_and_a_later_run_finishes(
    slow_run: SlowRun,
) -> None:
    run = slow_run
    args = (*run.args, "--lease-ttl", "2")
    proc = run.ws.popen([run.tei.url], *args, "--mongo-outage-timeout", "2", log="gone.log")
    await run.ws.wait_for(proc, run.ws.has_shard, "a shard")
    run.mongo.stop()
    code = await asyncio.to_thread(proc.wait, 60)
    assert code != 0
    assert "MongoDB unreachable for more than 2s" in run.ws.log("gone.log")

    run.mongo.start()
    run.tei.set_faults()
    assert await asyncio.to_thread(run.ws.run, [run.tei.url], *args, log="later.log") == 0, (
        run.ws.log("later.log")
    )
    assert_complete(run.ws.rows_allowing_repeats(), await run.marks(), run.corpus)


async def test_a_hanging_endpoint_is_routed_around(
    ws: Workspace,
    mongo: AsyncMongoClient[dict[str, Any]],
    tei_factory: Callable[..., FaultTei],
) -> None:
    healthy = tei_factory("--dimension", str(DIM))
    hanging = tei_factory("--dimension", str(DIM))
    corpus = corpora.tweets(200)
    queue = await seed(mongo, ws.database, corpus)
    hanging.set_faults(hang=True, after=1)  # the client's start-up probe gets through

    code = await asyncio.to_thread(
        ws.run, [hanging.url, healthy.url], "--once", "--request-timeout", "1"
    )

    assert code == 0, ws.log()
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)
    # Its requests either timed out, or (at the end of the queue) an idle endpoint answered
    # them first and the hung attempt was dropped: either way the hang was seen and left.
    timed_out = ws.summary()["errors_by_kind"].get("timeout", 0)
    assert timed_out >= 1 or "sent again to idle endpoints" in ws.log(), ws.log()


@pytest.mark.parametrize("garbage", ["nan", "count", "dim", "json", "truncated"])
async def test_garbage_answers_never_reach_a_shard(
    ws: Workspace,
    mongo: AsyncMongoClient[dict[str, Any]],
    tei_factory: Callable[..., FaultTei],
    garbage: str,
) -> None:
    healthy = tei_factory("--dimension", str(DIM))
    broken = tei_factory("--dimension", str(DIM))
    corpus = corpora.tweets(150)
    queue = await seed(mongo, ws.database, corpus)
    broken.set_faults(garbage=garbage, after=1)  # the client's start-up probe gets through

    code = await asyncio.to_thread(ws.run, [broken.url, healthy.url], "--once")

    assert code == 0, ws.log()
    assert broken.stats()["faults_injected"] >= 1
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)  # vectors compared exactly


async def test_a_whole_fleet_outage_is_held_not_failed(
    ws: Workspace,
    mongo: AsyncMongoClient[dict[str, Any]],
) -> None:
    port = free_port()
    args = [
        "-m",
        "tests.support.fault_tei",
        "--port",
        str(port),
        "--dimension",
        str(DIM),
        "--faults",
        '{"delay_s": 0.2}',
    ]
    server = start(args, ws.root / "tei-1.log")
    corpus = corpora.tweets(200)
    queue = await seed(mongo, ws.database, corpus)
    url = f"http://127.0.0.1:{port}"
    try:
        proc = ws.popen(
            [url], "--once", "--claim-size", "20", "--shard-rows", "20", "--concurrency", "1"
        )
        await ws.wait_for(proc, ws.has_shard, "a shard")
        server.stop()
        await wait_until(lambda: "ejected" in ws.log(), what="the endpoint to leave rotation")
        state = await marks(mongo, queue)
        assert not [
            v for v in state.values() if v and v["status"] == "failed" and "rejected" in v["reason"]
        ]
        assert proc.poll() is None, "the worker should hold during the outage, not exit"
        server = start(args, ws.root / "tei-2.log")
        code = await asyncio.to_thread(proc.wait, 120)
    finally:
        server.stop()
    assert code == 0, ws.log()
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)
    assert "back in rotation" in ws.log()


async def test_sigterm_drain_is_bounded_and_a_rerun_finishes_exactly_once(
    ws: Workspace,
    mongo: AsyncMongoClient[dict[str, Any]],
    tei_factory: Callable[..., FaultTei],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A signal while the fleet holds requests for minutes: the worker gives them up at the
    drain bound, marks what its shards hold, releases every lease and exits 0."""
    # Six requests answered (the start-up probe and five batches), every later one held ten
    # minutes: the signal always finds requests in flight, whatever the machine's speed.
    tei = tei_factory("--dimension", str(DIM), "--faults", '{"delay_s": 600, "after": 6}')
    corpus = corpora.tweets(300)
    queue = await seed(mongo, ws.database, corpus)
    monkeypatch.setenv("EMBEDDER_DRAIN_TIMEOUT", "1")  # the option, through its variable
    proc = ws.popen([tei.url], "--claim-size", "50", "--shard-rows", "20", "--concurrency", "1")
    await ws.wait_for(proc, ws.has_shard, "a shard")
    await ws.wait_for(proc, lambda: tei.stats()["requests"] > 6, "a held request")
    proc.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.to_thread(proc.wait, 60)  # the bound is 1 s; 60 s is margin
    finally:
        if proc.poll() is None:
            proc.kill()

    assert code == 0, ws.log()
    assert "drain timeout" in ws.log()
    rows = ws.rows()  # raises if an id is in two rows
    state = await marks(mongo, queue)
    done = {i for i, v in state.items() if v and v["status"] == "done"}
    assert done and done == set(rows), "marked docs and shard rows differ"
    assert len(done) < len(corpus.eligible), "the signal should land mid-run"
    control = await mongo[ws.database]["embedder_control"].find_one({})
    assert control is not None and control["leases"] == [], "leases were not released"

    tei.set_faults()
    assert await asyncio.to_thread(ws.run, [tei.url], "--once", log="rerun.log") == 0, ws.log(
        "rerun.log"
    )
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)  # each doc once


async def test_cold_storage_failing_mid_run_marks_nothing_and_names_the_path(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    tei = tei_factory("--dimension", str(DIM))
    tei.set_faults(delay_s=0.2)
    corpus = corpora.tweets(200)
    queue = await seed(mongo, ws.database, corpus)
    proc = ws.popen(
        [tei.url], "--once", "--claim-size", "20", "--shard-rows", "20", "--concurrency", "1"
    )
    await ws.wait_for(proc, ws.has_shard, "a shard")
    # The cold directory becomes unusable (a file where the directory was: as root, a
    # permission change would not stop a write).
    ws.shards.rename(ws.root / "shards-before")
    ws.shards.write_text("not a directory")
    code = await asyncio.to_thread(proc.wait, 60)

    assert code != 0
    assert str(ws.shards) in ws.log()
    state = await marks(mongo, queue)
    written = {
        p.name for p in (ws.root / "shards-before").glob("*.parquet") if not p.name.startswith(".")
    }
    for value in state.values():
        if value and value["status"] == "done":
            assert value["shard"] in written, "a doc was marked done with its shard not on disk"
    assert not [p for p in (ws.root / "shards-before").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
async def test_twenty_kills_of_the_worker_and_the_consolidator_lose_nothing(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    tei = tei_factory("--dimension", str(DIM))
    tei.set_faults(delay_s=0.05)
    corpus = corpora.tweets(300)
    queue = await seed(mongo, ws.database, corpus)
    out = ws.root / "consolidated"
    rng = random.Random(7)
    extra = ("--claim-size", "15", "--shard-rows", "15", "--lease-ttl", "1", "--concurrency", "2")
    for round_ in range(20):
        proc = ws.popen([tei.url], *extra, log=f"kill-{round_}.log")
        await asyncio.sleep(rng.uniform(0.8, 2.0))
        proc.kill()
        proc.wait(10)
        if round_ % 4 == 3:  # the consolidator, killed part-way as well
            consolidator = await asyncio.create_subprocess_exec(
                sys.executable,
                "consolidate_embeddings.py",
                "--shards-dir",
                str(ws.shards),
                "--consolidated-dir",
                str(out),
                "--target-file-size",
                "16K",
                cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            if consolidator.returncode is None:
                consolidator.kill()
            await consolidator.wait()
    tei.set_faults()
    assert (
        await asyncio.to_thread(ws.run, [tei.url], "--once", "--lease-ttl", "1", log="final.log")
        == 0
    )
    final = await asyncio.to_thread(ws.consolidate, out)
    assert final.returncode == 0, final.stderr

    table = pq.read_table(out)
    ids = table["_id"].to_pylist()
    assert len(ids) == len(set(ids)), "a doc appears twice in the consolidated output"
    assert set(ids) == {str(i) for i in corpus.eligible}
    state = await marks(mongo, queue)
    assert all(state[i]["status"] == "done" for i in corpus.eligible)


# --- whose fault is it (issue 12, case 2) -----------------------------------------------------

SICK = {"fail_every": 1, "fail_status": 424, "after": 1}  # TEI's Backend error, after the probe


def _failed_eligible(state: dict[Any, Any], corpus: corpora.Corpus) -> list[Any]:
    return [i for i in corpus.eligible if state[i] and state[i]["status"] == "failed"]


async def test_a_sick_endpoint_beside_a_busy_healthy_one_fails_no_doc(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    healthy = tei_factory("--dimension", str(DIM))
    healthy.set_faults(delay_s=0.5)  # busy: answers take a while
    sick = tei_factory("--dimension", str(DIM))
    sick.set_faults(**SICK)
    corpus = corpora.tweets(800)
    queue = await seed(mongo, ws.database, corpus)

    code = await asyncio.to_thread(ws.run, [sick.url, healthy.url], "--once", timeout=300)

    assert code == 0, ws.log()
    assert sick.stats()["faults_injected"] >= 1
    state = await marks(mongo, queue)
    assert not _failed_eligible(state, corpus), ws.log()[-3000:]
    assert_complete(ws.rows(), state, corpus)  # every vector compared exactly
    assert ws.summary()["failed"] == len(corpus.bad)
    assert "ejected" in ws.log()


@pytest.mark.parametrize("second", [SICK, {"garbage": "json", "after": 1}])
async def test_a_whole_sick_fleet_is_waited_out_then_exits_non_zero_failing_no_doc(
    ws: Workspace,
    mongo: AsyncMongoClient[dict[str, Any]],
    tei_factory: Callable[..., FaultTei],
    second: dict[str, Any],
) -> None:
    first, other = tei_factory("--dimension", str(DIM)), tei_factory("--dimension", str(DIM))
    first.set_faults(**SICK)
    other.set_faults(**second)
    corpus = corpora.tweets(100)
    queue = await seed(mongo, ws.database, corpus)

    code = await asyncio.to_thread(
        ws.run, [first.url, other.url], "--once", "--outage-timeout", "3", timeout=120
    )

    assert code != 0, ws.log()
    assert "no embedding endpoint" in ws.log(), ws.log()
    state = await marks(mongo, queue)
    assert not _failed_eligible(state, corpus)
    assert not [i for i in corpus.eligible if state[i]], "no eligible doc may be marked"


async def test_an_endpoint_back_with_another_model_stays_out(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    steady = tei_factory("--dimension", str(DIM))
    steady.set_faults(delay_s=0.3)
    switching = tei_factory("--dimension", str(DIM))
    switching.set_faults(delay_s=0.3)
    corpus = corpora.tweets(200)
    queue = await seed(mongo, ws.database, corpus)
    metrics_port = free_port()
    proc = ws.popen(
        [steady.url, switching.url],
        *("--once", "--batch-size", "4", "--concurrency", "1"),
        *("--metrics-port", str(metrics_port)),
    )
    await ws.wait_for(proc, lambda: switching.stats()["requests"] > 2, "requests to the endpoint")
    switching.set_faults(fail_every=1, fail_status=503)
    await ws.wait_for(proc, lambda: "ejected" in ws.log(), "the endpoint to leave rotation")
    # Restarted with another model of the same dimension (its /info says so).
    switching.set_faults(info={"model_id": "other/model-64"}, model_seed=7)
    await ws.wait_for(
        proc, lambda: "stays out of rotation" in ws.log(), "the re-admission check to refuse it"
    )
    async with httpx.AsyncClient() as http:
        scraped = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)).text
    code = await asyncio.to_thread(proc.wait, 180)

    assert code == 0, ws.log()
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)  # no vector of the other model
    refused = [
        line
        for line in scraped.splitlines()
        if line.startswith("embedder_endpoint_refused_total{") and 'reason="wrong_model"' in line
    ]
    assert refused and float(refused[0].split()[-1]) >= 1, scraped


# --- the fault table's consequences, without servers ----------------------------------------


@pytest.mark.parametrize("refusing", [1, 2])
async def test_a_refused_input_fails_only_when_another_endpoint_refuses_it_too(
    ws: Workspace,
    mongo: AsyncMongoClient[dict[str, Any]],
    tei_factory: Callable[..., FaultTei],
    refusing: int,
) -> None:
    servers = [tei_factory("--dimension", str(DIM)) for _ in range(2)]
    for server in servers[:refusing]:
        server.set_faults(reject_containing="POISON")
    servers[1].set_faults(delay_s=0.3, reject_containing="POISON" if refusing == 2 else None)
    corpus = corpora.tweets(100)
    poisoned = list(corpus.eligible)[:8]
    for doc in corpus.docs:
        if doc["_id"] in poisoned:
            doc["text"] = corpus.eligible[doc["_id"]] = f"POISON pill {doc['_id']}"
    if refusing == 2:  # the doc itself: refused everywhere, it fails with the server's reason
        for doc_id in poisoned:
            del corpus.eligible[doc_id]
            corpus.bad[doc_id] = "poisoned"
    queue = await seed(mongo, ws.database, corpus)

    code = await asyncio.to_thread(ws.run, [s.url for s in servers], "--once")

    assert code == 0, ws.log()
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)
    assert ws.summary()["failed"] == len(corpus.bad)


async def test_docs_refused_by_a_sick_endpoint_wait_for_a_healthy_one(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    """Endpoint A goes wrong and answers 422 to every input while B, which embeds them all, is
    out of rotation (503s): a refused single input waits for B, the endpoint that can confirm
    it, instead of failing on A's word alone (review finding 9)."""
    corpus = corpora.tweets(300)
    queue = await seed(mongo, ws.database, corpus)
    a = tei_factory("--dimension", str(DIM), "--batch-seconds", "0.3")
    b = tei_factory("--dimension", str(DIM), "--batch-seconds", "0.3")
    proc = ws.popen([a.url, b.url], "--once", "--claim-size", "50")
    await ws.wait_for(proc, lambda: a.stats()["inputs"] + b.stats()["inputs"] > 20, "a start")
    b.set_faults(fail_every=1, fail_status=503, unhealthy=True)
    await ws.wait_for(proc, lambda: f"endpoint {b.url} ejected" in ws.log(), "B to leave")
    a.set_faults(reject_containing="tweet")
    # Many single inputs refused by A while B is out, before B comes back.
    await ws.wait_for(proc, lambda: a.stats()["faults_injected"] > 40, "A's refusals")
    b.set_faults()
    assert await asyncio.to_thread(proc.wait, 180) == 0, ws.log()
    state = await marks(mongo, queue)
    assert not _failed_eligible(state, corpus), "good docs failed on the sick endpoint's word"
    assert_complete(ws.rows(), state, corpus)


async def test_refused_inputs_wait_for_a_confirming_endpoint_only_up_to_the_outage_bound(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    """A refuses every input and B never comes back: the refused inputs wait for B up to
    --outage-timeout, then the run stops with the fleet's error, no doc marked failed."""
    a, b = (tei_factory("--dimension", str(DIM)) for _ in range(2))
    a.set_faults(reject_containing="tweet", after=1)  # the start-up probe gets through
    b.set_faults(fail_every=1, fail_status=503, unhealthy=True, after=1)
    corpus = corpora.tweets(100)
    queue = await seed(mongo, ws.database, corpus)

    code = await asyncio.to_thread(
        ws.run, [a.url, b.url], "--once", "--outage-timeout", "3", timeout=120
    )

    assert code != 0, ws.log()
    assert f"no embedding endpoint other than {a.url}" in ws.log(), ws.log()
    state = await marks(mongo, queue)
    assert not [i for i in corpus.eligible if state[i]], "no eligible doc may be marked"


async def test_one_input_that_makes_the_model_answer_nan_does_not_stop_the_fleet(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    """One text makes the model answer NaN on every endpoint (an fp16 overflow: the same text,
    the same NaN, anywhere), while both endpoints embed everything else and the probe text
    well: the batch is narrowed to that input, which fails alone naming what the servers
    answered; the other docs are embedded and the run exits 0 (review finding 13)."""
    corpus = corpora.tweets(100)
    poison = list(corpus.eligible)[10]
    for doc in corpus.docs:
        if doc["_id"] == poison:
            doc["text"] = "POISON " + doc["text"]
    del corpus.eligible[poison]
    corpus.bad[poison] = "garbage"
    queue = await seed(mongo, ws.database, corpus)
    faults = {"nan_containing": "POISON", "after": 1}
    a, b = (tei_factory("--dimension", str(DIM)) for _ in range(2))
    a.set_faults(**faults)
    b.set_faults(**faults)

    code = await asyncio.to_thread(
        ws.run, [a.url, b.url], "--once", "--outage-timeout", "5", timeout=120
    )

    assert code == 0, ws.log()
    state = await marks(mongo, queue)
    assert_complete(ws.rows(), state, corpus)
    reason = state[poison]["reason"]
    assert reason.count("garbage") == 2 and a.url in reason and b.url in reason, reason
    assert "ejected" not in ws.log(), ws.log()

"""What a whole run pays from start to exit beyond embedding (bench.start_to_exit measures it):
behaviours asserted on what happened, never on how long it took."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from pymongo import AsyncMongoClient

from embedder.fleet.routing import PROBE_TEXT, Fleet, FleetSettings
from embedder.telemetry import Telemetry
from embedder.worker.hedging import TailHedging
from tests.support import corpus as corpora
from tests.support.servers import FaultTei
from tests.support.worker import Workspace, assert_complete, marks, seed


async def until(condition: Callable[[], bool], deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.05)


async def test_the_fleet_probes_every_endpoint_at_once(
    tei_factory: Callable[..., FaultTei],
) -> None:
    servers = [tei_factory(), tei_factory()]
    for server in servers:
        server.set_faults(hold=True)  # each keeps the probe it gets until released
    connecting = asyncio.create_task(
        Fleet.connect(FleetSettings(urls=tuple(s.url for s in servers)), Telemetry())
    )
    try:
        # One probe after the other would leave the second server without one while the
        # first holds its probe.
        await until(lambda: all(s.stats()["held"] == 1 for s in servers))
    finally:
        for server in servers:
            server.set_faults()
    fleet = await connecting
    try:
        assert fleet.dimension > 0
        assert [e.up for e in fleet.endpoints] == [True, True]
    finally:
        await fleet.close()


async def test_a_once_worker_exits_without_waiting_on_a_timer(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei: FaultTei
) -> None:
    corpus = corpora.tweets(120)
    queue = await seed(mongo, ws.database, corpus)

    code = await asyncio.to_thread(
        ws.run, [tei.url], "--once", "--claim-size", "50", "--poll-interval", "3600"
    )

    assert code == 0, ws.log()
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)
    phases = ws.summary()["phases"]
    # The queue ran dry and the worker left: no poll for new docs, no idle wait in the sink.
    assert phases["waits"] == {}, phases
    assert {"queue_empty", "last_marked", "finished"} <= set(phases["marks"]), phases
    at = {name: mark["at"] for name, mark in phases["marks"].items()}
    assert at["first_sent"] <= at["last_answered"] <= at["last_marked"] <= at["finished"]


async def test_a_batch_held_by_one_endpoint_at_the_end_is_answered_by_an_idle_one(
    tei_factory: Callable[..., FaultTei],
) -> None:
    stuck, idle = tei_factory(), tei_factory()
    fleet = await Fleet.connect(FleetSettings(urls=(stuck.url, idle.url)), Telemetry())
    texts = [f"the last batch, text {n}" for n in range(8)]
    try:
        expected = await fleet.embed(texts)
        stuck.set_faults(hold=True)
        hedging = TailHedging(fleet)
        batch = asyncio.create_task(hedging.embed(texts))
        await until(lambda: stuck.stats()["held"] == 1)  # the first attempt went to `stuck`
        assert not batch.done() and hedging.hedged == 0  # nothing hedged before the end
        hedging.nothing_left()
        result = await batch
        assert (hedging.hedged, hedging.won) == (1, 1)
        np.testing.assert_array_equal(result.vectors, expected.vectors)
        assert result.failures == {}
    finally:
        stuck.set_faults()
        await fleet.close()


async def test_the_tail_is_spread_across_endpoints_and_every_doc_written_once(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    gpu = ("--batch-seconds", "0.002", "--token-seconds", "0.0002")
    fast = [tei_factory(*gpu), tei_factory(*gpu)]
    slow = tei_factory(*gpu)
    # Its first batch answers after the queue has run dry (claims from MongoDB take a while).
    slow.set_faults(delay_s=3.0, after=1)  # its probe at start answers at once
    corpus = corpora.tweets(300)
    queue = await seed(mongo, ws.database, corpus)

    code = await asyncio.to_thread(
        ws.run, [s.url for s in (*fast, slow)], "--once", "--claim-size", "100"
    )

    assert code == 0, ws.log()
    # Each doc marked once, its vector in a shard once (no repeated row).
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)
    # The slow endpoint's batch went to a fast one too, once the queue had run dry.
    # The slow server counts a batch's texts when it answers, after its delay: wait for it.
    await until(lambda: bool(slow.texts() - {PROBE_TEXT}))
    held_by_slow = slow.texts() - {PROBE_TEXT}
    assert held_by_slow <= fast[0].texts() | fast[1].texts()
    assert "1 batch(es) sent again to idle endpoints, 1 answered first" in ws.log()

"""What a whole run pays from start to exit beyond embedding (bench.start_to_exit measures it):
behaviours asserted on what happened, never on how long it took."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from pymongo import AsyncMongoClient

from embedder.fleet.routing import Fleet, FleetSettings
from embedder.telemetry import Telemetry
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

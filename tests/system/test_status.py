"""``embedder status``: right numbers, from the two indexes only, and live workers."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from typing import Any

from pymongo import AsyncMongoClient

from tests.support.mongo import REAL_MONGO
from tests.support.servers import FaultTei, run_python
from tests.support.worker import Workspace

# mongoeco's inserts slow down as a collection grows; a real MongoDB takes the 100,000.
DOCS = 100_000 if REAL_MONGO else 1_000


async def test_status_shows_live_workers_with_their_progress(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    from tests.support import corpus as corpora
    from tests.support.worker import seed

    tei = tei_factory("--dimension", "64")
    await seed(mongo, ws.database, corpora.tweets(200))
    proc = ws.popen([tei.url], "--lease-ttl", "1.5", "--shard-rows", "50")  # continuous: stays up
    try:
        args = ws.command("status", "--consolidated-dir", str(ws.root / "none"), "--json")
        for _ in range(100):
            answer = await asyncio.to_thread(run_python, args)
            assert answer.returncode == 0, answer.stderr
            state = json.loads(answer.stdout)
            if state["workers"] and state["workers"][0]["embedded"] > 0 and state["pending"] == 0:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"status never showed the worker's progress: {state}")
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
    worker = state["workers"][0]
    assert worker["alive"] and worker["last_shard"].endswith(".parquet")
    assert state["done"] == 200 and state["failed"] == 5
    assert dict(state["failure_reasons"])["text field 'text' is empty"] == 2

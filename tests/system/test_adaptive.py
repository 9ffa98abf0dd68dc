"""Adaptive concurrency in a real run: simulated GPUs of different speeds, one with few permits."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import httpx
from pymongo import AsyncMongoClient

from tests.support import corpus as corpora
from tests.support.servers import FaultTei
from tests.support.worker import Workspace, assert_complete, marks, seed


def refused(tei: FaultTei) -> float:
    """429s the server answered, from its TEI counters."""
    text = httpx.get(tei.url + "/metrics", timeout=5).text
    found = re.search(r'^te_request_failure\{err="overloaded"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_adaptive_limits_feed_each_gpu_by_its_speed_without_a_single_429(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    gpu = ("--batch-seconds", "0.002", "--token-seconds", "0.0002")
    fast = tei_factory(*gpu)
    slow = tei_factory("--batch-seconds", "0.004", "--token-seconds", "0.0004")
    # 40 permits: two requests of 32 at once would be refused; the limit must stay at one.
    narrow = tei_factory(*gpu, "--max-concurrent-requests", "40")
    corpus = corpora.tweets(600)
    queue = await seed(mongo, ws.database, corpus)

    code = await asyncio.to_thread(
        ws.run, [fast.url, slow.url, narrow.url], "--once", "--claim-size", "100"
    )

    assert code == 0, ws.log()
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)
    assert [refused(t) for t in (fast, slow, narrow)] == [0, 0, 0]
    stats = {name: t.stats() for name, t in (("fast", fast), ("slow", slow))}
    assert stats["slow"]["inputs"] < stats["fast"]["inputs"], stats
    assert ws.summary()["errors_by_kind"].get("overloaded", 0) == 0
    # Short queues: paced requests, a couple in flight, where the pipeline had eight ready per
    # endpoint (a fixed --concurrency 8 sends them all; see the next test).
    assert all(s["max_inflight_inputs"] <= 4 * 32 for s in stats.values()), stats


async def test_a_fixed_limit_sends_what_it_is_told(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    tei = tei_factory("--batch-seconds", "0.002", "--token-seconds", "0.0002")
    corpus = corpora.tweets(600)
    queue = await seed(mongo, ws.database, corpus)

    code = await asyncio.to_thread(
        ws.run, [tei.url], "--once", "--claim-size", "300", "--concurrency", "8"
    )

    assert code == 0, ws.log()
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)
    assert tei.stats()["max_inflight_inputs"] > 4 * 32

"""``embed --processes 2``: two real worker processes under one supervisor, on mongoeco and the
fault-injecting TEI server. Requests are slowed (``delay_s``) so that both workers hold leases
at once, which each test waits for before it acts."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient

from embedder.queue.spec import QueueSpec
from tests.support import corpus as corpora
from tests.support.servers import FaultTei, free_port
from tests.support.worker import Workspace, assert_complete, marks, seed, wait_until

DIM = 64
# One request of 10 docs at a time per worker, each answered after the delay: a worker alone
# needs seconds for the corpus, so the second one starts long before the first could finish.
SLOW = ("--claim-size", "10", "--concurrency", "1", "--shard-rows", "20", "--lease-ttl", "2")


def _worker_pids(log: str) -> dict[int, int]:
    return {int(n): int(pid) for n, pid in re.findall(r"worker (\d+) \(pid (\d+)\) started", log)}


def _alive(pid: int) -> bool:
    """Running (a zombie has exited: it only waits for its parent to read its status)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def _both_hold_leases(
    ws: Workspace, proc: subprocess.Popen[bytes], mongo: AsyncMongoClient[dict[str, Any]], log: str
) -> dict[int, int]:
    """Wait until both workers hold leases at once; their pids."""

    async def holding() -> bool:
        assert proc.poll() is None, ws.log(log)
        control = await mongo[ws.database]["embedder_control"].find_one({})
        owners = {lease["owner"] for lease in (control or {}).get("leases", [])}
        return len(owners) == 2

    await wait_until(holding, what="both workers holding leases")
    pids = _worker_pids(ws.log(log))
    assert len(pids) == 2, ws.log(log)
    return pids


async def _gone(pids: dict[int, int], what: str) -> None:
    await wait_until(lambda: not any(map(_alive, pids.values())), what=what, within=60)


async def _done(mongo: AsyncMongoClient[dict[str, Any]], queue: QueueSpec) -> int:
    return await mongo[queue.database][queue.collection].count_documents(
        {queue.status_path: "done"}
    )


def _docs_counter(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        if family.name == "embedder_docs_embedded":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    raise AssertionError(f"no embedder_docs_embedded_total in:\n{text}")


async def _marked_all(mongo: AsyncMongoClient[dict[str, Any]], queue: QueueSpec, n: int) -> bool:
    return await _done(mongo, queue) == n


def _shards(ws: Workspace) -> list[str]:
    return [p.stem for p in ws.shards.glob("*.parquet") if not p.name.startswith(".")]


async def test_sigterm_to_the_supervisor_drains_both_workers(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    tei = tei_factory("--dimension", str(DIM))
    tei.set_faults(delay_s=0.5)
    corpus = corpora.tweets(120)
    queue = await seed(mongo, ws.database, corpus)

    proc = ws.popen([tei.url], "--processes", "2", *SLOW)
    pids = await _both_hold_leases(ws, proc, mongo, "worker.log")
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 60)

    assert code == 0, ws.log()
    assert not any(map(_alive, pids.values())), ws.log()
    log = ws.log()
    assert log.count("SIGTERM received: the 2 workers finish their in-flight work") == 1, log
    assert log.count("the supervisor got SIGTERM: finishing in-flight work") == 2, log
    rows = ws.rows()
    done = {i for i, v in (await marks(mongo, queue)).items() if v and v["status"] == "done"}
    assert done, "both held leases: some docs were finished"
    assert done <= set(rows), "a doc was marked done without its vector on disk"
    control = await mongo[ws.database]["embedder_control"].find_one({})
    assert control is not None and control["leases"] == [], "leases were not released"


async def test_a_killed_supervisor_leaves_no_worker_and_a_rerun_finishes_once(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    """Then the rerun: both workers behind one metrics endpoint, counting the docs it embeds
    once; SIGTERM ends it cleanly; every doc is in the shards once."""
    tei = tei_factory("--dimension", str(DIM))
    tei.set_faults(delay_s=0.4)
    corpus = corpora.tweets(160)
    queue = await seed(mongo, ws.database, corpus)

    proc = ws.popen([tei.url], "--processes", "2", *SLOW, log="killed.log")
    pids = await _both_hold_leases(ws, proc, mongo, "killed.log")
    supervisor = proc.pid
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    await _gone(pids, "the workers to notice their supervisor died and exit")

    log = ws.log("killed.log")
    assert log.count(f"its supervisor (pid {supervisor}) is gone") == 2, log
    control = await mongo[ws.database]["embedder_control"].find_one({})
    assert control is not None and control["leases"] == [], "the orphans did not drain"
    done_before = await _done(mongo, queue)
    eligible = len(corpus.eligible)
    assert 0 < done_before < eligible

    tei.set_faults()
    port = free_port()
    rerun = ws.popen([tei.url], "--processes", "2", "--metrics-port", str(port))
    await wait_until(lambda: _marked_all(mongo, queue, eligible), what="every doc marked")
    await wait_until(
        lambda: _docs_counter(port) == eligible - done_before, what="the counter at the total"
    )
    pids = _worker_pids(ws.log())
    rerun.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(rerun.wait, 60)

    assert code == 0, ws.log()
    assert len(pids) == 2 and not any(map(_alive, pids.values())), ws.log()
    assert ws.summary()["embedded"] == eligible - done_before  # the two workers' summed
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)  # rows(): no id twice


async def test_a_worker_killed_is_reported_and_the_other_drains(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    tei = tei_factory("--dimension", str(DIM))
    tei.set_faults(delay_s=0.5)
    corpus = corpora.tweets(120)
    await seed(mongo, ws.database, corpus)

    proc = ws.popen([tei.url], "--processes", "2", *SLOW)
    pids = await _both_hold_leases(ws, proc, mongo, "worker.log")
    os.kill(pids[1], signal.SIGKILL)
    code = await asyncio.to_thread(proc.wait, 60)

    log = ws.log()
    assert code == 128 + signal.SIGKILL, log
    assert f"worker 1 (pid {pids[1]}) was killed by SIGKILL (exit code 137)" in log, log
    assert "stopping the other workers" in log, log
    assert f"worker 2 (pid {pids[2]}) finished" in log, log
    assert not any(map(_alive, pids.values())), log

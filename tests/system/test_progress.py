"""Progress that tells the truth: two figures (embedded, durable) from the first batch, a bar
with log lines above it, a Ctrl-C that finishes only the requests in flight, and workers that
are gone shown as gone."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from embedder.ops import status
from embedder.queue.heartbeat import Heartbeat
from embedder.queue.liveness import FORGET_AFTER
from embedder.queue.work_queue import MongoWorkQueue
from tests.support import corpus as corpora
from tests.support.servers import ROOT, FaultTei, run_python
from tests.support.terminal import Terminal, screen
from tests.support.worker import Workspace, assert_complete, marks, seed, wait_until

LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR)")
BAR = re.compile(r"embedded:\s+\d+%\|.*\| (\d+)/(\d+) .*doc/s, ([\d,]+) durable, (\d+) failed")


@pytest.fixture
def terminal() -> Iterator[Callable[..., Terminal]]:
    opened: list[Terminal] = []

    def open_one(*args: str) -> Terminal:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
        opened.append(Terminal([sys.executable, *args], cwd=ROOT, env=env))
        return opened[-1]

    yield open_one
    for one in opened:
        one.close()


async def control_doc(mongo: AsyncMongoClient[dict[str, Any]], ws: Workspace) -> dict[str, Any]:
    return await mongo[ws.database]["embedder_control"].find_one({}) or {}


async def test_on_a_terminal_the_bar_moves_before_the_first_shard_and_ctrl_c_finishes_only_what_is_in_flight(
    ws: Workspace,
    mongo: AsyncMongoClient[dict[str, Any]],
    tei_factory: Callable[..., FaultTei],
    terminal: Callable[..., Terminal],
) -> None:
    # The start-up probe and two batches are answered; the third request is held until the
    # test lets it go. Shards close after 10 minutes and an idle pipeline commits after the
    # poll interval (60 s): until Ctrl-C, 64 docs are embedded and none is durable.
    tei = tei_factory()
    tei.set_faults(hold=True, after=3)
    corpus = corpora.tweets(300)
    queue = await seed(mongo, ws.database, corpus)
    run = terminal(
        *ws.args([tei.url], "--concurrency", "1", "--shard-age", "600", "--poll-interval", "60"),
        *("--log-interval", "0.5", "--lease-ttl", "3"),
    )

    def shows(pattern: str) -> Callable[[], bool]:
        def check() -> bool:
            assert run.proc.poll() is None, f"the worker exited:\n{run.text}"
            return re.search(pattern, run.text) is not None

        return check

    # The bar counts docs as their vectors come back (64, and the 5 bad docs failed at once);
    # the log line says the same, with a rate; nothing is durable yet.
    await wait_until(lambda: shows("")() and tei.stats()["held"] == 1, what="a request held")
    await wait_until(shows(r"\| 69/305 .*\b0 durable, 5 failed"), what="the bar at 69/305")
    await wait_until(
        shows(r"embedded 64 docs \([1-9][\d,]* docs/s, ETA [^)]+\), 0 durable and marked"),
        what="a log line with a rate before anything is durable",
    )
    rows = screen(run.text)
    assert BAR.search(rows[-1]), rows[-3:]  # the bar on the last row, log lines above it
    assert any("embedded 64 docs" in row for row in rows[:-1]), rows

    # `embedder status` shows the same two figures, from the worker's heartbeat.
    async def beat_reports_64() -> bool:
        workers = (await control_doc(mongo, ws)).get("workers", {})
        return any(w.get("embedded") == 64 for w in workers.values())

    await wait_until(beat_reports_64, what="a heartbeat with 64 embedded")
    answer = await asyncio.to_thread(run_python, ws.command("status", "--json"))
    assert answer.returncode == 0, answer.stderr
    state = json.loads(answer.stdout)
    (worker,) = state["workers"]
    assert (worker["embedded"], worker["marked"], worker["state"]) == (64, 0, "alive"), state
    assert state["done"] == 0 and state["failed"] == 0
    text = await asyncio.to_thread(run_python, ws.command("status"))
    assert "64 embedded" in text.stdout and "0 durable" in text.stdout, text.stdout
    assert "(64 of them embedded, not yet durable)" in text.stdout, text.stdout

    # Ctrl-C: the held request (32 docs) is finished, the 69 decided docs and those 32 are made
    # durable and marked, the 204 never sent are released.
    run.press_ctrl_c()
    stopping = (
        r"stopping: finishing 1 requests in flight \(32 docs\), making durable and marking "
        r"101 docs, then releasing 204 docs not sent; at most 90s"
    )
    await wait_until(shows(stopping), what="the stopping line")
    tei.set_faults()  # the request in flight is answered
    assert await asyncio.to_thread(run.proc.wait, 60) == 0, run.text

    # Every log line sits on a row of its own, never inside the bar's row.
    for row in screen(run.text):
        found = LOG_LINE.search(row)
        assert found is None or found.start() == 0, f"a log line broke into the bar: {row!r}"
        assert not (found and "doc/s]" in row), row

    sent = tei.texts()
    state_after = await marks(mongo, queue)
    done = {i for i, mark in state_after.items() if mark and mark["status"] == "done"}
    failed = {i for i, mark in state_after.items() if mark and mark["status"] == "failed"}
    assert done == {i for i, text in corpus.eligible.items() if text in sent}
    assert len(done) == 96 and failed == set(corpus.bad)
    assert set(ws.rows()) == done
    control = await control_doc(mongo, ws)
    assert control["leases"] == [] and control["workers"] == {}, control
    pending = await mongo[ws.database]["tweets"].count_documents(queue.pending_query())
    assert pending == len(corpus.eligible) - 96

    # A later run embeds the released docs, and each doc is in the output once.
    code = await asyncio.to_thread(ws.run, [tei.url], "--once", log="rerun.log")
    assert code == 0, ws.log("rerun.log")
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)


async def test_a_killed_worker_is_shown_gone_its_lease_awaited_then_it_is_dropped(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    tei = tei_factory()
    tei.set_faults(hold=True, after=1)
    corpus = corpora.tweets(40)
    queue = await seed(mongo, ws.database, corpus)
    # The killed worker's lease lasts 12 s; the waiter beats every 0.5 s meanwhile.
    killed = ws.popen([tei.url], "--lease-ttl", "12", log="killed.log")
    await ws.wait_for(killed, lambda: tei.stats()["held"] >= 1, "a request held", "killed.log")

    async def holds_a_lease() -> bool:
        return bool((await control_doc(mongo, ws)).get("leases"))

    await wait_until(holds_a_lease, what="the first worker's lease")
    killed.send_signal(signal.SIGKILL)
    await asyncio.to_thread(killed.wait, 30)
    control = await control_doc(mongo, ws)
    (dead,) = control["workers"]
    expires_at = Heartbeat.from_bson(control["workers"][dead]).expires_at
    assert expires_at is not None

    # Its heartbeat has not expired, yet status knows at once: the process is gone from here.
    answer = await asyncio.to_thread(run_python, ws.command("status", "--json"))
    assert answer.returncode == 0, answer.stderr
    (shown,) = json.loads(answer.stdout)["workers"]
    assert shown["state"] == "gone" and not shown["alive"], shown
    assert json.loads(answer.stdout)["rate_docs_per_s"] == 0

    # Another worker waits for the lease and says so, in its log and in status.
    tei.set_faults()
    waiter = ws.popen([tei.url], "--once", "--lease-ttl", "1.5", log="waiter.log")
    waiting = f"waiting for lease of worker {dead[:8]} (gone) to expire at "
    await ws.wait_for(
        waiter, lambda: waiting in ws.log("waiter.log"), "the waiting line", "waiter.log"
    )
    assert expires_at.strftime("%H:%M:%S UTC") in ws.log("waiter.log")

    async def status_says_waiting() -> bool:
        shown = await status.collect(mongo, queue)
        return any(waiting in line for line in shown.lines())

    await wait_until(status_says_waiting, what="status showing the wait", within=30)
    assert await asyncio.to_thread(waiter.wait, 120) == 0, ws.log("waiter.log")
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)

    # The summary's rate leaves out the time it waited with nothing to do (at least one poll
    # of 0.5 s), and keeps the wall time beside it.
    summary = ws.summary()
    assert summary["elapsed_s"] - summary["working_s"] > 0.45, summary
    # Both are rounded in the JSON: compare within that rounding, not to a fixed 0.1 docs/s.
    rate = summary["embedded"] / summary["working_s"]
    assert summary["docs_per_s"] == pytest.approx(rate, rel=0.01), summary

    # Status lists a gone worker for FORGET_AFTER after its last heartbeat, then no longer;
    # the next worker to register removes its entry from the control document.
    later = dt.datetime.now(dt.UTC) + FORGET_AFTER + dt.timedelta(minutes=1)
    assert [w.owner for w in (await status.collect(mongo, queue)).workers] == [dead]
    assert (await status.collect(mongo, queue, now=later)).workers == []
    await MongoWorkQueue(mongo, queue, clock=lambda: later).register()
    assert dead not in (await control_doc(mongo, ws))["workers"]

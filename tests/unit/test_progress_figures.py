"""The figures progress is shown with, and how a worker is judged gone (no servers)."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys

from embedder.ops.status import QueueStatus, WorkerState
from embedder.queue.heartbeat import Heartbeat, WorkerProgress
from embedder.queue.liveness import Life, ProcessRef, life
from embedder.telemetry import Summary
from embedder.worker.progress import Pace, duration

AT = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
TTL = dt.timedelta(seconds=60)


def test_the_summary_rate_counts_working_time_only_and_keeps_the_wall_time() -> None:
    summary = Summary(started=100.0, embedded=300)
    summary.idle(now=110.0)
    summary.idle(now=115.0)  # already idle: the idle stretch still starts at 110
    summary.busy(now=150.0)
    summary.busy(now=151.0)  # already busy: nothing to add
    assert summary.idle_s == 40.0
    assert summary.working_s(now=160.0) == 20.0
    summary.idle(now=160.0)  # an idle stretch still going is left out too
    assert summary.working_s(now=170.0) == 20.0


def test_the_report_names_both_figures_the_working_rate_and_the_wall_time() -> None:
    summary = Summary(embedded=30, marked=20)
    summary.started -= 10.0
    summary.idle(now=summary.started + 4.0)
    summary.busy(now=summary.started + 8.0)
    numbers = summary.as_dict()
    working, wall = numbers["working_s"], numbers["elapsed_s"]
    assert isinstance(working, float) and isinstance(wall, float)
    assert numbers["marked"] == 20 and wall >= 10.0 and 5.9 <= working <= wall - 4.0
    assert numbers["docs_per_s"] == round(30 / working, 1)
    assert summary.lines()[0].startswith("embedded 30 docs (20 durable and marked) in ")


def test_pace_moves_with_the_docs_of_the_last_interval_and_gives_an_eta() -> None:
    pace = Pace(now=0.0)
    assert pace.eta_s(100) is None  # no rate yet
    assert pace.sample(64, now=2.0) == 32.0
    assert pace.eta_s(320) == 10.0 and pace.eta_s(None) is None
    assert pace.sample(64, now=4.0) == 0.0 and pace.eta_s(320) is None
    assert [duration(s) for s in (None, 45, 200, 3900, 90000)] == [
        "-",
        "45s",
        "3m 20s",
        "1h 05m",
        "1d 1h",
    ]


def test_a_worker_is_gone_when_its_process_is_gone_from_this_host_or_its_beat_expired() -> None:
    me = ProcessRef.current()
    assert not me.gone()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # exited and reaped: its pid names no process
    ended = ProcessRef(me.host, child.pid, me.pid_namespace, me.started)
    assert ended.gone()
    # Elsewhere nothing can be told from a pid: another host, another PID namespace.
    assert not ProcessRef(me.host + "-other", child.pid, me.pid_namespace).gone()
    assert not ProcessRef(me.host, child.pid, "pid:[1]").gone()
    # This pid, but a process started at another time: the pid was reused.
    if me.started is not None:
        assert ProcessRef(me.host, os.getpid(), me.pid_namespace, me.started + 1).gone()
    assert life(me, AT, AT + TTL, AT + dt.timedelta(seconds=10)) is Life.ALIVE
    assert life(me, AT, AT + TTL, AT + dt.timedelta(seconds=41)) is Life.SILENT
    assert life(me, AT, AT + TTL, AT + dt.timedelta(seconds=61)) is Life.GONE
    assert life(ended, AT, AT + TTL, AT + dt.timedelta(seconds=1)) is Life.GONE


def test_a_zombie_is_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        me = ProcessRef.current()
        assert ProcessRef(socket.gethostname(), child.pid, me.pid_namespace, None).gone()
    finally:
        child.wait()


def test_the_heartbeat_keeps_the_process_and_both_figures() -> None:
    progress = WorkerProgress(embedded=64, marked=0, waiting_for="lease of worker x")
    beat = Heartbeat.of(ProcessRef("h", 7, "pid:[9]", 1234), AT, AT + TTL, progress)
    assert Heartbeat.from_bson(beat.to_bson()) == beat
    assert beat.process == ProcessRef("h", 7, "pid:[9]", 1234)


def test_status_lines_show_both_figures_gone_workers_and_waits() -> None:
    working = WorkerState("a" * 32, "h", 1, True, None, 1, 64, 32.0, "", marked=0, waiting_for="")
    waiting = WorkerState(
        "b" * 32, "h", 2, True, None, 0, 0, 0.0, "", waiting_for="lease of worker cccccccc"
    )
    gone = WorkerState(
        "c" * 32, "h", 3, False, "03:04:05", 1, 10, 0.0, "", state="gone", expires_at="03:05:05"
    )
    shown = QueueStatus(
        "db.docs", "t", 100, 0, 0, [], 32.0, 1.0, False, [working, waiting, gone], 2
    ).lines()
    text = "\n".join(shown)
    assert "pending 100 (64 of them embedded, not yet durable)" in text
    assert "64 embedded (0 by re-use), 0 durable, 32.0 docs/s" in text
    assert "alive, waiting for lease of worker cccccccc" in text
    assert "gone (last heard 03:04:05); its 1 leases expire at 03:05:05" in text

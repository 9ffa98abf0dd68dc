"""The supervisor of ``embed --processes`` with real worker processes that run small tasks:
one progress bar for all, one summary, the workers' log lines, a failure reported by name; and
every metric of the workers served as one (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from embedder.queue.heartbeat import WorkerProgress
from embedder.telemetry import Summary, Telemetry
from embedder.worker.process_link import WorkerExit, WorkerLink
from embedder.worker.processes import MULTIPROC_DIR, ProcessesSettings, run_processes


@dataclass(frozen=True)
class Counting:
    """Shows ``docs`` on the display ten at a time, logs a line, returns a summary (or fails)."""

    docs: int
    exit_code: int = 0

    def __call__(self, link: WorkerLink) -> Summary:
        display = link.display(40)
        for _ in range(self.docs // 10):
            display.embedded(10, 0, 100)
        display.close()  # the supervisor's to close, once all are done
        logging.getLogger("embedder.test").warning("counted %d", self.docs)
        if self.exit_code:
            raise WorkerExit("the task broke", self.exit_code)
        return Summary(embedded=self.docs, tokens=10 * self.docs)


def test_one_bar_and_one_summary_for_all_workers(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    result = run_processes([Counting(10), Counting(30)], ProcessesSettings(progress_bar=True))

    assert result.exit_code == 0
    assert (result.summary.embedded, result.summary.tokens) == (40, 400)
    assert [w.exit_code for w in result.workers] == [0, 0]
    # One bar, fed by both workers' calls: 10 + 30 of the 40 pending.
    bar = capfd.readouterr().err
    assert "40/40" in bar, bar
    assert bar.count("embedded:   0%") <= 1, bar
    lines = {(r.name, r.getMessage()) for r in caplog.records}
    assert ("embedder.test (worker 1)", "counted 10") in lines
    assert ("embedder.test (worker 2)", "counted 30") in lines


def test_a_failing_worker_is_named_and_sets_the_exit_code(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    result = run_processes([Counting(10), Counting(20, exit_code=3)], ProcessesSettings())

    assert result.exit_code == 3
    assert result.summary.embedded == 10  # the failed worker has no summary
    pid = result.workers[1].pid
    assert f"worker 2 (pid {pid}) failed (exit code 3): the task broke" in caplog.text
    assert re.search(r"worker 1 \(pid \d+\) finished", caplog.text), caplog.text


@dataclass(frozen=True)
class ReportingUntilStopped:
    """Reports its progress, then waits for the supervisor to pass on a stop."""

    embedded: int

    def __call__(self, link: WorkerLink) -> Summary:
        async def run() -> None:
            stopped = asyncio.Event()
            link.attach(stopped.set)
            link.report(WorkerProgress(embedded=self.embedded, leases=1, last_shard="s"))
            await stopped.wait()

        asyncio.run(run())
        return Summary(embedded=self.embedded)


def test_one_progress_line_for_all_and_a_signal_stops_every_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    line = "2 of 2 workers running: embedded 30 docs (0 docs/s), 0 durable and marked, failed 0, leases 2"

    def signal_once_both_are_counted() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(line in m for m in caplog.messages):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # the supervisor's to pass on, even after a miss

    watcher = threading.Thread(target=signal_once_both_are_counted)
    watcher.start()
    tasks = [ReportingUntilStopped(10), ReportingUntilStopped(20)]
    result = run_processes(tasks, ProcessesSettings(log_interval_s=0.1))
    watcher.join()

    assert any(line in message for message in caplog.messages), caplog.text
    assert result.exit_code == 0 and result.summary.embedded == 30
    assert caplog.text.count("SIGTERM received: the 2 workers finish their in-flight work") == 1
    assert caplog.text.count("the supervisor got SIGTERM: finishing in-flight work") == 2


# One worker process's metrics: every Telemetry series touched, with values scaled by argv[1].
_RECORD_METRICS = """
import sys
from embedder.errors import FaultKind
from embedder.telemetry import Telemetry
from embedder.worker.documents import FailureCause

n = int(sys.argv[1])
t = Telemetry()
t.prepare(["http://e1"])
t.sent(n); t.reused(n, n); t.claimed(n); t.embedded(10 * n)
t.failed("empty", next(iter(FailureCause)))
t.request_ok("http://e1", 32, 0.01, 100); t.request_failed("http://e1", FaultKind.OVERLOADED)
t.retried(FaultKind.OVERLOADED); t.ejected("http://e1", FaultKind.OVERLOADED)
t.refused("http://e1", FaultKind.OVERLOADED); t.shard_written(1000); t.mark_seconds.observe(0.2)
t.leases.set(n); t.queue_pending.set(100 - n); t.queue_done.set(n)
for gauge in (t.inflight_requests, t.inflight_inputs, t.concurrency_limit, t.queue_share):
    gauge.labels("http://e1").set(n)
t.endpoint_up.labels("http://e1").set(n - 1)
"""


def test_every_metric_works_in_multiprocess_mode(tmp_path: Path) -> None:
    """Two processes record every series; the supervisor's collector serves them as one."""
    env = {**os.environ, MULTIPROC_DIR: str(tmp_path)}
    for n in (1, 2):
        subprocess.run([sys.executable, "-c", _RECORD_METRICS, str(n)], env=env, check=True)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    merged = {family.name: family for family in registry.collect()}

    assert {family.name for family in Telemetry().registry.collect()} <= set(merged)

    def value(name: str, **labels: str) -> float:
        [sample] = [s for s in merged[name].samples if labels.items() <= s.labels.items()]
        return sample.value

    assert value("embedder_docs_embedded") == 30  # counters add up
    assert merged["embedder_request_duration_seconds"].samples  # histograms too
    assert value("embedder_leases") == 3  # livesum
    assert value("embedder_inflight_requests", endpoint="http://e1") == 3
    assert value("embedder_endpoint_up", endpoint="http://e1") == 0  # livemin
    assert value("embedder_queue_pending") == 98  # the latest count (livemostrecent)
    shares = merged["embedder_queue_share"].samples
    assert sorted(s.value for s in shares) == [1, 2] and all("pid" in s.labels for s in shares)

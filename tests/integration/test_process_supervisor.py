"""The supervisor of ``embed --processes`` with real worker processes that run small tasks:
one progress bar for all, one summary, the workers' log lines, a failure reported by name."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import pytest

from embedder.telemetry import Summary
from embedder.worker.process_link import WorkerExit, WorkerLink
from embedder.worker.processes import ProcessesSettings, run_processes


@dataclass(frozen=True)
class Counting:
    """Shows ``docs`` on the display ten at a time, logs a line, returns a summary (or fails)."""

    docs: int
    exit_code: int = 0

    def __call__(self, link: WorkerLink) -> Summary:
        display = link.display(40)
        for _ in range(self.docs // 10):
            display.advance(10, 0, 100)
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
    assert bar.count("embedding:   0%") <= 1, bar
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

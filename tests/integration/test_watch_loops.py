"""The ``--watch`` loops, owned by their stages: each round is shown, and a stop ends the loop
after the round in progress (no servers)."""

from __future__ import annotations

import threading
from pathlib import Path

from embedder.ops import status
from embedder.storage.consolidate import ConsolidateSettings, ConsolidationReport, consolidate_every


def _status(pending: int) -> status.QueueStatus:
    return status.QueueStatus(
        collection="db.docs",
        target_field="embedded",
        pending=pending,
        done=0,
        failed=0,
        failure_reasons=[],
        rate_docs_per_s=0.0,
        eta_s=None,
        paused=False,
    )


def test_status_watch_reads_and_shows_each_round_until_stopped() -> None:
    stop = threading.Event()
    reads = iter(range(10, 0, -1))
    shown: list[int] = []

    def show(current: status.QueueStatus) -> None:
        shown.append(current.pending)
        if len(shown) == 3:
            stop.set()

    status.watch(lambda: _status(next(reads)), show, every_s=0.01, stop=stop)
    assert shown == [10, 9, 8]


def test_consolidate_every_reports_each_round_until_stopped(tmp_path: Path) -> None:
    (tmp_path / "shards").mkdir()
    settings = ConsolidateSettings(
        shards_uri=str(tmp_path / "shards"), output_uri=str(tmp_path / "out")
    )
    stop = threading.Event()
    reports: list[ConsolidationReport] = []

    def on_report(report: ConsolidationReport) -> None:
        reports.append(report)
        if len(reports) == 2:
            stop.set()

    consolidate_every(settings, every_s=0.01, stop=stop, on_report=on_report)
    assert [r.rows_in for r in reports] == [0, 0]
    assert reports[0].run_id != reports[1].run_id
    assert reports[0].lines()[0].startswith("consolidated 0 shards: 0 rows in, 0 out")

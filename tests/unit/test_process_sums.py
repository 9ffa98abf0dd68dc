"""Adding up the records of several worker processes (``embed --processes``)."""

from __future__ import annotations

import collections
import dataclasses

import click
import pytest

from embedder.cli.types import PROCESS_COUNT
from embedder.queue.heartbeat import WorkerProgress
from embedder.telemetry import Summary
from embedder.worker.processes import describe, sum_progress, sum_summaries, usable_cores


def test_summaries_add_every_count_from_the_earliest_start() -> None:
    first = Summary(started=10.0, embedded=3, failed=1, tokens=30, shards=1, idle_s=2.0)
    first.failure_reasons["empty"] += 1
    second = Summary(started=8.0, embedded=5, retries=2, shard_bytes=100, idle_s=0.5)
    second.failure_reasons["empty"] += 2
    second.errors_by_kind["overloaded"] += 1

    total = sum_summaries([first, second])

    assert total.started == 8.0
    assert (total.idle_s, total.idle_since) == (0.5, None)  # all idle at most this long
    assert (total.embedded, total.failed, total.retries, total.tokens) == (8, 1, 2, 30)
    assert (total.shards, total.shard_bytes) == (1, 100)
    assert total.failure_reasons == collections.Counter(empty=3)
    assert total.errors_by_kind == collections.Counter(overloaded=1)
    # Every other count too, whatever Summary holds: each field of the sum is the parts' sum.
    for spec in dataclasses.fields(Summary):
        if spec.name not in {"started", "idle_s", "idle_since", "phases"}:
            assert getattr(total, spec.name) == getattr(first, spec.name) + getattr(
                second, spec.name
            )


def test_progress_adds_numbers_ors_flags_and_keeps_the_last_text() -> None:
    older = WorkerProgress(embedded=10, failed=1, rate_docs_per_s=2.5, leases=2, last_shard="a")
    newer = WorkerProgress(embedded=5, rate_docs_per_s=1.0, reused=4, paused=True, last_shard="")
    latest = WorkerProgress(embedded=1, last_shard="c")

    total = sum_progress([older, newer, latest])

    assert total == WorkerProgress(
        embedded=16, failed=1, rate_docs_per_s=3.5, leases=2, last_shard="c", reused=4, paused=True
    )
    assert sum_progress([older, newer]).last_shard == "a"  # an empty text is not news


def test_progress_line_reads_as_a_single_workers() -> None:
    line = describe(WorkerProgress(embedded=1200, marked=1000, rate_docs_per_s=512.25, leases=3))
    assert line == "embedded 1200 docs (512 docs/s), 1000 durable and marked, failed 0, leases 3"
    waiting = describe(WorkerProgress(paused=True, waiting_for="lease of worker ab (gone)"))
    assert waiting.endswith(", paused (embedder resume), waiting for lease of worker ab (gone)")


def test_process_count_is_a_number_or_auto() -> None:
    assert PROCESS_COUNT.convert("3", None, None) == 3
    assert PROCESS_COUNT.convert("auto", None, None) == usable_cores() >= 1
    for wrong in ("0", "-2", "two"):
        with pytest.raises(click.BadParameter):
            PROCESS_COUNT.convert(wrong, None, None)

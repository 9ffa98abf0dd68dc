"""``embed --processes N``: one job run by N worker processes (``embedder.worker.processes``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import click

from embedder.cli.running import run
from embedder.telemetry import Summary
from embedder.worker.process_link import WorkerExit, WorkerLink
from embedder.worker.processes import ProcessesResult, ProcessesSettings, run_processes
from embedder.worker.runner import EmbedJob, run_embed


@dataclass(frozen=True, slots=True)
class EmbedTask:
    """What one worker process runs: ``embed`` itself, its errors turned into the exit codes
    and one-line messages that ``embed`` has on its own."""

    job: EmbedJob

    def __call__(self, link: WorkerLink) -> Summary:
        try:
            return run(run_embed(self.job, link), self.job.mongo_uri, self.job.fleet.api_key)
        except click.ClickException as exc:
            raise WorkerExit(exc.format_message(), exc.exit_code) from None


def embed_in_processes(job: EmbedJob, count: int) -> ProcessesResult:
    """``job`` by ``count`` worker processes on its queue. The supervisor serves the metrics;
    one worker watches for changed texts (one watcher re-queues a changed doc once)."""
    tasks = [
        EmbedTask(
            dataclasses.replace(job, metrics=None, changes=job.changes if index == 0 else None)
        )
        for index in range(count)
    ]
    settings = ProcessesSettings(
        metrics=job.metrics,
        progress_bar=job.progress_bar,
        log_interval_s=job.worker.log_interval_s,
    )
    return run_processes(tasks, settings)

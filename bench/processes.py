"""``embed --processes 2`` against one process: what a second worker process adds on this host.

The supervisor of ``embed --processes`` (``embedder.worker.processes``) runs 1, then 2, worker
processes against one instant TEI-compatible server (precomputed 768-d vectors, its own
process), in the same run. Each worker is the real pipeline (``Worker``: batching, the HTTP
client, real Parquet shards on local disk) reporting through the real link (display calls,
progress records, log lines); its queue is an in-memory one holding its share of the corpus
(``bench.memory_queue``), so the queue is never the bottleneck: mongoeco's wire server moves a
few hundred docs a second, far below one worker (MongoDB's side is ``bench.queue_scale``'s).

    python -m bench.processes [--docs 100000] [--batch-size 32] [--concurrency 8]

docs/s: all docs over the span from the first worker's start of work to the last one's end.
CPU: the workers' (each process's CPU time while it works, all its threads) and the instant
server's, per 1,000 docs. On a 2-core machine two workers and the server share two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.memory_queue import run_worker
from embedder import Fleet, FleetSettings, Summary, Telemetry
from embedder.devtools.samples import generate
from embedder.worker.process_link import WorkerLink
from embedder.worker.processes import ProcessesSettings, run_processes
from tests.support.servers import start


@dataclass(frozen=True)
class MemoryQueueTask:
    """One worker process: its share of the texts from memory into shards under ``out``."""

    texts: tuple[str, ...]
    url: str
    out: Path
    batch_size: int
    concurrency: int

    def __call__(self, link: WorkerLink) -> Summary:
        import uvloop

        return uvloop.run(self._run(link))

    async def _run(self, link: WorkerLink) -> Summary:
        telemetry = Telemetry()
        settings = FleetSettings(
            urls=(self.url,), batch_size=self.batch_size, concurrency=self.concurrency
        )
        fleet = await Fleet.connect(settings, telemetry)
        try:
            display = link.display(len(self.texts))
            started, cpu = time.monotonic(), time.process_time()
            summary, _ = await run_worker(
                fleet, telemetry, self.texts, self.out, progress=display, reporter=link.report
            )
            figures = {
                "docs": summary.embedded,
                "cpu_s": time.process_time() - cpu,
                "started": started,
                "ended": time.monotonic(),
            }
        finally:
            await fleet.close()
        (self.out / "figures.json").write_text(json.dumps(figures))
        return summary


@dataclass(frozen=True)
class Row:
    processes: int
    docs_per_s: float
    worker_cpu_per_1000: float
    server_cpu_per_1000: float


def _cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    count: int, texts: list[str], url: str, server_pid: int, args: argparse.Namespace
) -> Row:
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"worker-{i}" for i in range(count)]
        tasks = [
            MemoryQueueTask(tuple(texts[i::count]), url, outs[i], args.batch_size, args.concurrency)
            for i in range(count)
        ]
        server_cpu = _cpu_seconds(server_pid)
        result = run_processes(tasks, ProcessesSettings(progress_bar=False))
        server_cpu = _cpu_seconds(server_pid) - server_cpu
        assert result.exit_code == 0, result
        figures = [json.loads((out / "figures.json").read_text()) for out in outs]
    docs = sum(f["docs"] for f in figures)
    assert docs == result.summary.embedded == len(texts)
    span = max(f["ended"] for f in figures) - min(f["started"] for f in figures)
    return Row(
        count,
        docs / span,
        sum(f["cpu_s"] for f in figures) / docs * 1000,
        server_cpu / docs * 1000,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    texts = [s.text for s in generate(args.docs, seed=1)]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        server = start(
            ["-m", "tests.support.instant_tei", "--port", "0", "--dimension", "768"],
            Path(tmp) / "server.log",
        )
        try:
            # Unmeasured: the server's first answers (it builds its vectors once) and the
            # imports' first time through.
            measure(1, texts[:1000], server.address, server.proc.pid, args)
            rows = [measure(n, texts, server.address, server.proc.pid, args) for n in (1, 2)]
        finally:
            server.stop()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    print(
        f"docs: {args.docs}, 768-d, batch {args.batch_size}, {args.concurrency} requests in "
        "flight per process; in-memory queue, one per process (never the bottleneck)"
    )
    print(
        "| processes | docs/s | vs 1 process | worker CPU s / 1,000 docs | server CPU s / 1,000 docs |"
    )
    print("|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row.processes} | {row.docs_per_s:,.0f} | {row.docs_per_s / rows[0].docs_per_s:.2f} "
            f"| {row.worker_cpu_per_1000:.3f} | {row.server_cpu_per_1000:.3f} |"
        )


if __name__ == "__main__":
    main()

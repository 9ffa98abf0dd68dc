"""Peak resident memory of one worker embedding article-length texts.

The worker holds every doc it embedded until the shard holding its vector is durable and the
doc is marked (up to ``--shard-rows`` docs or ``--shard-age`` seconds: 50,000 and 300 s by
default). What it keeps for them decides its memory: the texts, or only what marking needs.

An instant TEI-compatible server (its own process) and an in-memory queue stand in for the
fleet and MongoDB, as in bench.pipeline_ceiling; the queue makes each claim's texts when it
is claimed, so the texts a worker holds are the worker's own. Shards are real Parquet on local
disk, 50,000 rows each (the default): the whole run fits in one open shard.

    python -m bench.worker_memory [--docs 20000] [--text-kb 20]

It prints the figures; it judges nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
import uuid
from pathlib import Path

from bench.memory_queue import MemoryWorkQueue
from embedder import (
    Claim,
    Fleet,
    FleetSettings,
    Lease,
    ShardMetadata,
    ShardSettings,
    ShardWriter,
    Telemetry,
    Worker,
    WorkerSettings,
)
from tests.support.servers import start

_FILLER = "lorem ipsum dolor sit amet, consectetur adipiscing elit. "


class GeneratedQueue(MemoryWorkQueue):
    """``docs`` docs of ``size`` bytes of text each, made when claimed (never all at once)."""

    def __init__(self, docs: int, size: int, claim_size: int = 1000) -> None:
        super().__init__([], claim_size)
        self._total = docs
        self._size = size
        self._issued = 0

    def _text(self, number: int) -> str:
        head = f"article {number}: "
        body = _FILLER * (self._size // len(_FILLER) + 1)
        return (head + body)[: self._size]

    async def claim(self) -> Claim | None:
        if self._issued >= self._total:
            return None
        ids = range(self._issued, min(self._issued + self._claim_size, self._total))
        self._issued = ids.stop
        docs = [{"_id": i, "text": self._text(i)} for i in ids]
        return Claim(Lease(uuid.uuid4().hex, ids[0], ids[-1], self.owner), docs, taken_over=False)

    async def pending_count(self) -> int:
        return self._total - self._issued


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


async def measure(url: str, docs: int, size: int, out: Path) -> tuple[int, int, float]:
    """Peak RSS before the run, after it, and the run's seconds."""
    telemetry = Telemetry()
    fleet = await Fleet.connect(FleetSettings(urls=(url,), batch_size=32, concurrency=8), telemetry)
    try:
        queue = GeneratedQueue(docs, size)
        shards = ShardWriter(
            ShardSettings(cold_uri=str(out / "shards"), hot_dir=out / "hot"),
            owner=queue.owner,
            dimension=fleet.dimension,
            metadata=ShardMetadata(model_id=fleet.info.model_id),
        )
        # The CLI's defaults: an idle sink commits after the poll interval, so a shorter one
        # would mark (and forget) docs before the shard's rows or age call for it.
        worker = Worker(queue, fleet, shards, telemetry, WorkerSettings(once=True))
        before = _peak_rss()
        started = time.perf_counter()
        summary = await worker.run()
        elapsed = time.perf_counter() - started
        assert summary.embedded == docs == queue.marked, summary
    finally:
        await fleet.close()
    return before, _peak_rss(), elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--text-kb", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start(
            ["-m", "tests.support.instant_tei", "--port", "0", "--dimension", "768"],
            Path(tmp) / "server.log",
        )
        try:
            before, peak, elapsed = await measure(
                server.address, args.docs, args.text_kb * 1024, Path(tmp)
            )
        finally:
            server.stop()
    mib = 1 << 20
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"docs: {args.docs} of {args.text_kb} KiB text, 768-d, one shard of 50,000 rows")
    print(f"texts in all: {args.docs * args.text_kb * 1024 / mib:,.0f} MiB")
    print(f"peak RSS before the run: {before / mib:,.0f} MiB")
    print(f"peak RSS of the run:     {peak / mib:,.0f} MiB")
    print(f"run: {elapsed:.1f} s ({args.docs / elapsed:,.0f} docs/s)")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())

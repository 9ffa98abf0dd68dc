"""A work queue in memory, for benchmarks that must not measure MongoDB."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from embedder import (
    AwaitedLease,
    Claim,
    DoneMark,
    Fleet,
    Lease,
    LeaseTracker,
    ShardMetadata,
    ShardSettings,
    ShardWriter,
    Summary,
    Telemetry,
    TextReuse,
    Worker,
    WorkerProgress,
    WorkerSettings,
)
from embedder.worker.progress import Progress


class MemoryWorkQueue:
    def __init__(self, texts: Sequence[str], claim_size: int = 1000) -> None:
        self.owner = uuid.uuid4().hex
        self._docs = [{"_id": i, "text": t} for i, t in enumerate(texts)]
        self._next = 0
        self._claim_size = claim_size
        self._leases: set[str] = set()
        self.marked = 0

    async def register(self) -> None:
        return None

    async def heartbeat(self, progress: WorkerProgress | None = None) -> None:
        return None

    async def leave(self) -> None:
        return None

    async def claim(self) -> Claim | None:
        if self._next >= len(self._docs):
            return None
        docs = self._docs[self._next : self._next + self._claim_size]
        self._next += len(docs)
        lease = Lease(uuid.uuid4().hex, docs[0]["_id"], docs[-1]["_id"], self.owner)
        self._leases.add(lease.id)
        return Claim(lease, docs, taken_over=False)

    async def release(self, leases: Sequence[Lease]) -> None:
        for lease in leases:
            self._leases.discard(lease.id)

    async def others_hold_leases(self) -> bool:
        return False

    async def leases_awaited(self) -> list[AwaitedLease]:
        return []

    async def pending_count(self) -> int:
        return len(self._docs) - self._next

    async def done_count(self) -> int:
        return self.marked

    async def paused(self) -> bool:
        return False

    async def mark(
        self,
        done_ids: list[Any],
        mark: DoneMark | None,
        failed: list[tuple[Any, str]],
        text_hashes: list[bytes] | None = None,
    ) -> int:
        self.marked += len(done_ids) + len(failed)
        return len(done_ids) + len(failed)


async def run_worker(
    fleet: Fleet,
    telemetry: Telemetry,
    texts: Sequence[str],
    out: Path,
    *,
    max_rows: int = 50_000,
    reuse: TextReuse[LeaseTracker] | None = None,
    progress: Progress | None = None,
    reporter: Callable[[WorkerProgress], None] | None = None,
) -> tuple[Summary, float]:
    """One --once worker over ``texts`` from memory into real shards under ``out``: its
    summary and how long it took."""
    queue = MemoryWorkQueue(texts)
    shards = ShardWriter(
        ShardSettings(cold_uri=str(out / "shards"), hot_dir=out / "hot", max_rows=max_rows),
        owner=queue.owner,
        dimension=fleet.dimension,
        metadata=ShardMetadata(model_id=fleet.info.model_id),
    )
    worker = Worker(
        queue,
        fleet,
        shards,
        telemetry,
        WorkerSettings(once=True, poll_interval_s=0.2),
        reuse=reuse,
        progress=progress,
        reporter=reporter,
    )
    started = time.perf_counter()
    summary = await worker.run()
    elapsed = time.perf_counter() - started
    assert summary.embedded == len(texts) == queue.marked, summary
    return summary, elapsed

"""TEI's admission and dynamic batching, in asyncio.

Every input takes one permit; a request whose inputs do not all find one is refused at once
(429). Admitted inputs queue FIFO and are cut into model batches of at most
``max_batch_tokens`` tokens, so under load the model runs full batches and throughput is the
model's, not one request's. The model runs in a worker thread while the event loop keeps
admitting and queueing. A request whose client went away has its queued inputs skipped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from embedder.serve.backends import Backend

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """No free permit for every input of a request."""


class BackendFailed(Exception):
    """The model failed on a batch."""


@dataclass(slots=True)
class _Entry:
    ids: list[int]
    future: asyncio.Future[np.ndarray]
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float = 0.0  # when the model batch holding it started
    done_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Timing:
    """A request's time queued (admission to its first model batch) and in the model (first
    batch's start to last batch's end): TEI's x-queue-time and x-inference-time."""

    queue_s: float
    inference_s: float


@dataclass(frozen=True, slots=True)
class BatchStats:
    size: int
    tokens: int
    queue_s: float
    inference_s: float


class Scheduler:
    def __init__(
        self,
        backend: Backend,
        *,
        max_concurrent_requests: int = 512,
        max_batch_tokens: int = 16384,
        max_batch_requests: int | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.backend = backend
        self.max_concurrent_requests = max_concurrent_requests
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_requests = max_batch_requests
        self._free = max_concurrent_requests
        self._queue: collections.deque[_Entry] = collections.deque()
        self._wakeup = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._on_batch = on_batch

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="model-batches")

    async def stop(self) -> None:
        if self._runner:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)

    def admit(self, count: int) -> Permits:
        """Take ``count`` permits or refuse at once, as TEI does."""
        if count > self._free:
            raise Overloaded(f"Model is overloaded: {count} inputs, {self._free} permits free")
        self._free -= count
        return Permits(self, count)

    async def embed(self, token_ids: list[list[int]]) -> tuple[np.ndarray, Timing]:
        """Vectors for already-admitted inputs, in order (raises BackendFailed)."""
        loop = asyncio.get_running_loop()
        entries = [_Entry(ids, loop.create_future()) for ids in token_ids]
        self._queue.extend(entries)
        self._wakeup.set()
        try:
            rows = await asyncio.gather(*(e.future for e in entries))
        finally:
            for entry in entries:
                if not entry.future.done():
                    entry.future.cancel()  # the batcher skips it
        first = min(e.started_at for e in entries)
        timing = Timing(
            first - min(e.queued_at for e in entries), max(e.done_at for e in entries) - first
        )
        return np.stack(rows), timing

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = self._cut()
            if not batch:
                continue
            started = time.perf_counter()
            for entry in batch:
                entry.started_at = started
            try:
                vectors = await asyncio.to_thread(self.backend.embed, [e.ids for e in batch])
            except Exception as exc:  # a model failure answers its requests with 424
                log.exception("model failed on a batch of %d", len(batch))
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(BackendFailed(str(exc)))
                continue
            done = time.perf_counter()
            for entry, vector in zip(batch, vectors, strict=True):
                entry.done_at = done
                if not entry.future.done():
                    entry.future.set_result(vector)
            if self._on_batch:
                queue_s = started - min(e.queued_at for e in batch)
                self._on_batch(
                    BatchStats(len(batch), sum(len(e.ids) for e in batch), queue_s, done - started)
                )

    def _cut(self) -> list[_Entry]:
        batch: list[_Entry] = []
        tokens = 0
        limit = self.max_batch_requests or len(self._queue)
        while self._queue and len(batch) < limit:
            entry = self._queue[0]
            if entry.future.done():  # cancelled: its client is gone
                self._queue.popleft()
                continue
            if batch and tokens + len(entry.ids) > self.max_batch_tokens:
                break
            batch.append(self._queue.popleft())
            tokens += len(entry.ids)
        return batch


class Permits:
    def __init__(self, scheduler: Scheduler, count: int) -> None:
        self._scheduler = scheduler
        self._count = count

    def __enter__(self) -> Permits:
        return self

    def __exit__(self, *_: object) -> None:
        self._scheduler._free += self._count
        self._count = 0

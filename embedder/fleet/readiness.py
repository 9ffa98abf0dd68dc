"""Waiting for the embedding servers to come up before the worker starts.

TEI downloads and loads its model before it listens (minutes for a large model), so a worker
started beside it would find no endpoint and exit, and its orchestrator restart it in a loop.
With a wait, the worker polls every endpoint's ``/health`` until one answers, logging which it
waits for, and starts then; the fleet admits the others when they come up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

log = logging.getLogger("embedder")

POLL_S = 1.0
LOG_EVERY_S = 10.0


class Checkable(Protocol):
    url: str

    def healthy(self) -> Awaitable[bool]: ...


async def wait_for_health(
    endpoints: Sequence[Checkable],
    timeout_s: float,
    *,
    poll_s: float = POLL_S,
    log_every_s: float = LOG_EVERY_S,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Wait up to ``timeout_s`` until one of ``endpoints`` answers ``/health``; True when one
    does. Past the bound the caller goes on and reports the fleet as it finds it."""
    if timeout_s <= 0 or not endpoints:
        return True
    started = clock()
    logged = started - log_every_s
    while True:
        answers = await asyncio.gather(*(e.healthy() for e in endpoints))
        if any(answers):
            if clock() - started >= poll_s:
                log.info("embedding server(s) up after %.0f s", clock() - started)
            return True
        waited = clock() - started
        if waited >= timeout_s:
            log.warning(
                "no embedding server answered /health within --wait-for-servers %.0f s: %s",
                timeout_s,
                ", ".join(e.url for e in endpoints),
            )
            return False
        if clock() - logged >= log_every_s:
            logged = clock()
            log.info(
                "waiting for the embedding servers to answer /health (%.0f s of at most %.0f s): "
                "%s",
                waited,
                timeout_s,
                ", ".join(e.url for e in endpoints),
            )
        await asyncio.sleep(min(poll_s, max(0.0, timeout_s - waited)))

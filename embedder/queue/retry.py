"""Waiting out MongoDB outages: transient failures retried with backoff, for a bounded time.

A primary election, a restart or a network blip surfaces as a connection failure. Every
queue operation is safe to repeat (marks carry ``target: null``, releases and heartbeats are
idempotent, and a claim whose answer was lost leaves a lease the worker adopts), so the
worker retries them until the outage bound, then gives up with a clear error; its leases
expire and a later run finishes the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from pymongo.errors import ConnectionFailure, PyMongoError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

from embedder.errors import QueueError

log = logging.getLogger(__name__)


def transient(exc: BaseException) -> bool:
    """Connection trouble, or an error MongoDB itself labels as worth retrying."""
    if isinstance(exc, ConnectionFailure):
        return True
    return isinstance(exc, PyMongoError) and (
        exc.has_error_label("RetryableWriteError")
        or exc.has_error_label("TransientTransactionError")
    )


class MongoRetry:
    def __init__(
        self,
        outage_timeout_s: float = 600.0,
        *,
        first_backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.outage_timeout_s = outage_timeout_s
        self._first = first_backoff_s
        self._max = max_backoff_s
        self._down_since: float | None = None

    async def __call__[T](self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        retrying = AsyncRetrying(
            retry=retry_if_exception(transient),
            wait=wait_exponential_jitter(multiplier=self._first, jitter=self._first, max=self._max),
            stop=stop_after_delay(self.outage_timeout_s),
            before_sleep=self._waiting,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    result = await operation()
        except PyMongoError as exc:
            if transient(exc):
                raise QueueError(
                    f"MongoDB unreachable for more than {self.outage_timeout_s:.0f}s while {what}: {exc}"
                ) from exc
            raise QueueError(f"{what} failed: {exc}") from exc
        if self._down_since is not None:
            log.warning("MongoDB reachable again after %.0fs", time.monotonic() - self._down_since)
            self._down_since = None
        return result

    def _waiting(self, state: RetryCallState) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "MongoDB unreachable (%s); retrying for up to %.0fs", exc, self.outage_timeout_s
            )

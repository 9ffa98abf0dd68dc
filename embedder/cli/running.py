"""Running a command's coroutine: the event loop, a MongoDB client, errors as click's."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from embedder.cli import failures
from embedder.errors import EmbedderError
from embedder.queue import connection as mongo
from embedder.queue.spec import QueueSpec


async def with_mongo[T](
    mongo_uri: str,
    action: Callable[[AsyncMongoClient[dict[str, Any]]], Awaitable[T]],
    *,
    queue: QueueSpec | None = None,
) -> T:
    """Connect, check MongoDB answers (and that ``queue`` has its indexes: the command to
    create them otherwise), run ``action`` with the client, close."""
    client = mongo.connect(mongo_uri)
    try:
        await mongo.check_reachable(client, mongo_uri)
        if queue is not None:
            await mongo.check_indexes(client, queue, mongo_uri)
        return await action(client)
    finally:
        await client.close()


def run[T](coroutine: Coroutine[Any, Any, T], *secrets: str | None) -> T:
    """Run ``coroutine``; its errors become click's, with ``secrets`` scrubbed from them."""
    try:
        result: T = event_loop_runner()(coroutine)
    except EmbedderError as exc:
        raise failures.cannot_run(exc, *secrets) from None
    return result


def event_loop_runner() -> Any:
    try:
        import uvloop
    except ImportError:  # Windows, or a minimal install
        return asyncio.run
    return uvloop.run


def stop_flag() -> threading.Event:
    """Set by SIGINT/SIGTERM, so a --watch loop finishes its current round and exits 0."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def write_json(path: Path | None, record: Any, option: str) -> None:
    """A report's ``as_dict()`` as JSON at ``path``, when one is given (``option``): call it
    once the result is shown, which a failure to write does not lose."""
    if path is not None:
        failures.write_after_result(path, json.dumps(record.as_dict(), indent=2), option)

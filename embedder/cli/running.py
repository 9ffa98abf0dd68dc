"""Running a command's coroutine: the event loop, a MongoDB client, errors as click's."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import click
from pymongo import AsyncMongoClient

from embedder import logs
from embedder.errors import ConfigurationError, EmbedderError
from embedder.queue import connection as mongo


async def with_mongo[T](
    mongo_uri: str, action: Callable[[AsyncMongoClient[dict[str, Any]]], Awaitable[T]]
) -> T:
    """Connect, check MongoDB answers, run ``action`` with the client, close."""
    client = mongo.connect(mongo_uri)
    try:
        await mongo.check_reachable(client, mongo_uri)
        return await action(client)
    finally:
        await client.close()


def run[T](coroutine: Coroutine[Any, Any, T], *secrets: str | None) -> T:
    """Run ``coroutine``; its errors become click's, with ``secrets`` scrubbed from them."""
    try:
        result: T = event_loop_runner()(coroutine)
    except ConfigurationError as exc:
        message = logs.redact(mongo.scrub(str(exc), *secrets))
        raise click.ClickException("configuration: " + message) from None
    except EmbedderError as exc:
        raise click.ClickException(logs.redact(mongo.scrub(str(exc), *secrets))) from None
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


def write_json(path: Path | None, record: Any) -> None:
    """A report's ``as_dict()`` as JSON at ``path``, when one is given."""
    if path is not None:
        path.write_text(json.dumps(record.as_dict(), indent=2))

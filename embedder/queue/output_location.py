"""Where a queue's output lives, recorded in its control document.

A worker records its shards directory when it starts, a consolidator (given the queue and
MongoDB) its shards and consolidated directories; ``status`` and ``verify`` read them from
there, so they find the output from any directory and any host. Local paths are recorded
absolute; URIs without their credentials (user info and query options), which the reader's
environment supplies again.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from embedder.errors import QueueError
from embedder.queue.spec import QueueSpec
from embedder.queue.work_queue import create_control

FIELD = "output"
CONSOLIDATED_NAME = "consolidated"
SHARDS_NAME = "shards"


@dataclass(frozen=True, slots=True)
class OutputLocation:
    shards: str | None = None
    consolidated: str | None = None

    @classmethod
    def from_control(cls, control: dict[str, Any] | None) -> OutputLocation:
        raw = (control or {}).get(FIELD) or {}
        shards, consolidated = raw.get("shards"), raw.get("consolidated")
        return cls(
            shards=shards if isinstance(shards, str) else None,
            consolidated=consolidated if isinstance(consolidated, str) else None,
        )


def absolute(uri: str) -> str:
    """A local path made absolute, so every message names it whatever the current directory;
    a URI as it is."""
    return uri if "://" in uri else str(Path(uri).expanduser().resolve())


def location(uri: str) -> str:
    """``uri`` as recorded and shown: a local path made absolute; a URI without credentials."""
    if "://" not in uri:
        return absolute(uri)
    parts = urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


async def record_output(
    client: AsyncMongoClient[dict[str, Any]],
    spec: QueueSpec,
    *,
    shards: str | None = None,
    consolidated: str | None = None,
) -> None:
    """Record the queue's shards and/or consolidated location (the last writer's stand)."""
    update: dict[str, Any] = {f"{FIELD}.at": dt.datetime.now(dt.UTC)}
    update[f"{FIELD}.by"] = socket.gethostname()
    if shards is not None:
        update[f"{FIELD}.shards"] = location(shards)
    if consolidated is not None:
        update[f"{FIELD}.consolidated"] = location(consolidated)
    control = client[spec.database][spec.control_collection]
    try:
        await create_control(control, spec.key)
        await control.update_one({"_id": spec.key}, {"$set": update})
    except PyMongoError as exc:
        raise QueueError(f"recording where the output of {spec.key} lives failed: {exc}") from exc


async def recorded_output(
    client: AsyncMongoClient[dict[str, Any]], spec: QueueSpec
) -> OutputLocation:
    control = client[spec.database][spec.control_collection]
    try:
        found = await control.find_one({"_id": spec.key}, projection={FIELD: 1})
    except PyMongoError as exc:
        raise QueueError(f"reading the control document of {spec.key} failed: {exc}") from exc
    return OutputLocation.from_control(found)


def resolve(
    recorded: OutputLocation,
    *,
    shards: str | None,
    consolidated: str | None,
    defaults: tuple[str, str],
) -> tuple[str, str]:
    """The shards and consolidated locations to read: given ones win, then the recorded ones;
    a consolidated location never recorded is ``consolidated`` beside a ``shards`` directory
    (the default layout), else the default."""
    found_shards = location(shards or recorded.shards or defaults[0])
    if consolidated or recorded.consolidated:
        return found_shards, location(consolidated or recorded.consolidated or "")
    parent, name = posixpath.split(found_shards.rstrip("/"))
    if name == SHARDS_NAME:
        return found_shards, f"{parent}/{CONSOLIDATED_NAME}"
    return found_shards, location(defaults[1])

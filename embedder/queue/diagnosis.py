"""Explaining a queue that cannot run or holds nothing: a missing collection, the command
that creates its indexes as it can be run, a filter that matches no doc."""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import ExecutionTimeout, PyMongoError

from embedder.queue import marks
from embedder.queue.connection import collection, redact_uri
from embedder.queue.spec import (
    DEFAULT_DATABASE,
    DEFAULT_EXCLUDE,
    DEFAULT_FILTER,
    DEFAULT_TARGET_FIELD,
    QueueSpec,
)

# How long a look for a doc matching the filter may take: with no doc matching, MongoDB
# scans the whole collection (the filter's fields need not be indexed).
_LOOK_MS = 5_000


def indexes_command(spec: QueueSpec, uri: str | None) -> str:
    """The `embedder indexes` command for this queue, runnable as printed: every option that
    shapes the indexes, and the MongoDB URI unless the command would find it itself (the
    environment's EMBEDDER_MONGO_URI). A URI's password is never printed: it is shown as
    ***, to be typed in its place."""
    words = ["embedder", "indexes", "--collection", spec.collection]
    if spec.database != DEFAULT_DATABASE:
        words += ["--database", spec.database]
    if dict(spec.filter) != dict(DEFAULT_FILTER):
        words += ["--filter", json.dumps(dict(spec.filter), default=str)]
    if dict(spec.exclude) != dict(DEFAULT_EXCLUDE):
        words += ["--exclude", json.dumps(dict(spec.exclude), default=str)]
    if spec.target_field != DEFAULT_TARGET_FIELD:
        words += ["--target-field", spec.target_field]
    note = ""
    if uri and uri != os.environ.get("EMBEDDER_MONGO_URI"):
        shown = redact_uri(uri)
        words += ["--mongo-uri", shown]
        if shown != uri:
            note = " (with the password in place of ***)"
    return shlex.join(words) + note


async def missing_collection(
    client: AsyncMongoClient[dict[str, Any]], spec: QueueSpec
) -> str | None:
    """Says so when the queue's collection does not exist, naming what the database holds."""
    database = client[spec.database]
    try:
        names = await database.list_collection_names()
    except PyMongoError:
        return None  # not allowed to list: the caller's own message stands
    if spec.collection in names:
        return None
    others = sorted(
        n for n in names if not n.startswith("system.") and n != spec.control_collection
    )
    held = f"it holds {', '.join(others[:8])}" + (", ..." if len(others) > 8 else "")
    return (
        f"the collection {spec.database}.{spec.collection} does not exist "
        f"({held if others else 'the database holds no collection'})"
    )


async def why_nothing_pending(
    client: AsyncMongoClient[dict[str, Any]], spec: QueueSpec
) -> str | None:
    """When no doc is pending, done or failed: why (empty collection, a filter that matches
    no doc, an --exclude that leaves none); None when the queue holds docs. Needs the
    queue's indexes (``check_indexes``)."""
    docs = collection(client, spec)
    where = f"{spec.database}.{spec.collection}"
    try:
        # Cheap on the queue's own indexes: a queue with any doc pending or finished is fine.
        if await docs.find_one(spec.pending_query(), {"_id": 1}, hint=spec.index_name):
            return None
        finished = {spec.status_path: {"$in": [marks.DONE, marks.FAILED]}}
        if await docs.find_one(finished, {"_id": 1}, hint=spec.done_index_name):
            return None
        if await docs.find_one({}, {"_id": 1}) is None:
            missing = await missing_collection(client, spec)
            return missing or f"the collection {where} holds no docs"
        matching = await docs.find_one(dict(spec.filter), {"_id": 1}, max_time_ms=_LOOK_MS)
        if matching is None:
            return (
                f"no doc of {where} matches the queue filter {_json(spec.filter)} (--filter; "
                "the default is the seed's tweets): give the filter your docs match, "
                "or --filter '{}' for every doc"
            )
        query = {**spec.filter, **spec.exclude}
        if await docs.find_one(query, {"_id": 1}, max_time_ms=_LOOK_MS) is None:
            return (
                f"docs of {where} match the queue filter, but --exclude {_json(spec.exclude)} "
                "leaves none of them: give --exclude '{}' to keep them all"
            )
    except ExecutionTimeout:
        return (
            f"no doc of {where} is pending, done or failed, and no doc matching the queue "
            f"filter {_json(spec.filter)} was found within {_LOOK_MS // 1000} s"
        )
    except PyMongoError:
        return None
    return None


def _json(value: Any) -> str:
    return json.dumps(dict(value), default=str)

"""Texts for ``embedder autotune``: a random sample of the collection, or a file.

Tuning on the real texts matters: TEI cuts batches by tokens, so the best client batch and
concurrency depend on how long the texts are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from embedder.errors import ConfigurationError
from embedder.queue.connection import scrub
from embedder.worker.documents import Doc, to_doc


def texts_from_file(path: Path, text_field: str, limit: int) -> list[str]:
    """One text per line, or JSON lines holding ``text_field`` (dotted paths work)."""
    texts: list[str] = []
    with path.open(encoding="utf-8") as lines:
        for number, raw in enumerate(lines, 1):
            if len(texts) >= limit:
                break
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            if line.lstrip().startswith("{"):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigurationError(f"{path}:{number}: not JSON: {exc}") from exc
                parsed = to_doc({"_id": f"{path.name}:{number}", **record}, text_field)
                if isinstance(parsed, Doc):
                    texts.append(parsed.text)
            else:
                texts.append(line)
    if not texts:
        raise ConfigurationError(f"{path} holds no texts")
    return texts


async def texts_from_collection(
    client: AsyncMongoClient[dict[str, Any]],
    database: str,
    collection: str,
    text_field: str,
    size: int,
) -> list[str]:
    """A random sample (``$sample`` first, so MongoDB picks random docs without a scan)."""
    pipeline: list[dict[str, Any]] = [
        {"$sample": {"size": size}},
        {"$project": {text_field: 1}},
    ]
    try:
        cursor = await client[database][collection].aggregate(pipeline)
        docs = await cursor.to_list()
    except PyMongoError as exc:
        raise ConfigurationError(f"cannot sample {collection}: {scrub(str(exc))}") from exc
    parsed = [to_doc(doc, text_field) for doc in docs]
    texts = [d.text for d in parsed if isinstance(d, Doc)]
    if not texts:
        raise ConfigurationError(
            f"a sample of {size} docs of {collection} holds no text in {text_field!r}"
        )
    return texts

"""Loading the generated sample corpus into MongoDB as tweet-like docs, eligible for the
default queue (``lang: "en"``, ``classified: true``): ``make demo`` and ``embedder dev-samples``."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient

from embedder.devtools.samples import generate

# Inserts of this many docs: one insert of thousands keeps mongoeco busy past pymongo's
# heartbeat, which then cancels it.
CHUNK = 250


def sample_docs(
    count: int, *, seed: int = 7, duplicate_rate: float = 0.05, first_id: int = 1
) -> list[dict[str, Any]]:
    """``count`` docs with small integer ids from ``first_id``: mongoeco's SQLite engine
    updates ids beyond 2**53 (real tweet ids) two orders of magnitude slower; MongoDB does not
    care."""
    return [
        {"_id": first_id + i, "lang": "en", "classified": True, "text": s.text, "topic": s.topic}
        for i, s in enumerate(generate(count, seed=seed, duplicate_rate=duplicate_rate))
    ]


async def load_samples(
    client: AsyncMongoClient[dict[str, Any]],
    database: str,
    collection: str,
    docs: list[dict[str, Any]],
) -> None:
    for first in range(0, len(docs), CHUNK):
        await client[database][collection].insert_many(docs[first : first + CHUNK])

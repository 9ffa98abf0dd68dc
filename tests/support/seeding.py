"""Seeding a large queue on mongoeco without tripping pymongo's heartbeat."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient

from embedder.queue import connection as mongo
from embedder.queue.spec import QueueSpec
from tests.support import corpus as corpora


async def seed(
    client: AsyncMongoClient[dict[str, Any]], database: str, corpus: corpora.Corpus
) -> QueueSpec:
    """tests.support.worker.seed in chunks: one insert of a thousand docs (one of 100k characters)
    keeps mongoeco busy past pymongo's heartbeat, which then cancels the insert."""
    queue = QueueSpec(collection="tweets", database=database)
    for start in range(0, len(corpus.docs), 100):
        await client[database][queue.collection].insert_many(corpus.docs[start : start + 100])
    await mongo.ensure_indexes(client, queue)
    return queue

"""status against MongoDB alone: its counts come through the indexes."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient, monitoring

from embedder.ops.status import collect
from embedder.queue import connection as mongo_setup
from embedder.queue.spec import QueueSpec
from tests.support.mongo import REAL_MONGO

# mongoeco's inserts slow down as a collection grows; a real MongoDB takes the 100,000.
DOCS = 100_000 if REAL_MONGO else 1_000


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.seen.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


async def test_status_counts_through_the_indexes_only(mongo_uri: str, db_name: str) -> None:
    spec = QueueSpec(collection="tweets", database=db_name)
    listener = Commands()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_uri, tz_aware=True, event_listeners=[listener]
    )
    try:
        docs = client[db_name]["tweets"]
        for first in range(0, DOCS, 500):
            await docs.insert_many(
                [
                    {"_id": i, "lang": "en", "classified": True, "text": f"t{i}"}
                    for i in range(first, first + 500)
                ]
            )
        await mongo_setup.ensure_indexes(client, spec)
        await docs.update_many(
            {"_id": {"$lt": 300}}, {"$set": {spec.target_field: {"status": "done"}}}
        )
        for i, reason in enumerate(["text field 'text' is empty"] * 7 + ["rejected: too long"] * 3):
            await docs.update_one(
                {"_id": 400 + i},
                {"$set": {spec.target_field: {"status": "failed", "reason": reason}}},
            )
        listener.seen.clear()

        status = await collect(client, spec)
    finally:
        await client.drop_database(db_name)
        await client.close()

    assert (status.done, status.failed, status.pending) == (300, 10, DOCS - 310)
    assert status.failure_reasons == [("text field 'text' is empty", 7), ("rejected: too long", 3)]
    on_docs = [
        c
        for c in listener.seen
        if c.get("count") == "tweets" or c.get("aggregate") == "tweets" or c.get("find") == "tweets"
    ]
    assert on_docs, "status should have counted on the collection"
    for command in on_docs:
        # A hinted query cannot fall back to a collection scan: MongoDB refuses it instead.
        assert command.get("hint") in (spec.index_name, spec.done_index_name), command

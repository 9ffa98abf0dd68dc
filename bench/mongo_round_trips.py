"""MongoDB round trips per 1,000 docs for a whole run (claim, read, mark, release, heartbeat).

Runs the real worker (``run_embed``) against an embedded MongoDB (mongoeco) and the instant
TEI server, counting every command the worker sends with pymongo's command monitoring.

    python -m bench.mongo_round_trips [--docs 3000] [--claim-size 1000] [--shard-rows 5000]

Round trips do not depend on the server's speed; mongoeco is slow (its inserts slow down as
a collection grows), so the default collection is small.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient, monitoring

from embedder import (
    EmbedJob,
    FleetSettings,
    QueueSpec,
    ShardSettings,
    WorkerSettings,
    WorkQueueSettings,
    ensure_indexes,
    run_embed,
)
from embedder.devtools.samples import generate
from tests.support.servers import start


class CommandCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.commands: collections.Counter[str] = collections.Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


async def seed(uri: str, spec: QueueSpec, count: int) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    docs = [
        {"_id": i, "lang": "en", "classified": True, "text": s.text}
        for i, s in enumerate(generate(count))
    ]
    for first in range(0, len(docs), 500):  # mongoeco slows with large single inserts
        await client[spec.database][spec.collection].insert_many(docs[first : first + 500])
    await ensure_indexes(client, spec)
    await client.close()


async def measure(
    uri: str, tei: str, root: Path, docs: int, args: argparse.Namespace
) -> collections.Counter[str]:
    spec = QueueSpec(collection=f"tweets_{docs}", database="bench")
    await seed(uri, spec, docs)
    counter = CommandCounter()
    job = EmbedJob(
        mongo_uri=uri,
        queue=spec,
        fleet=FleetSettings(urls=(tei,)),
        shards=ShardSettings(
            cold_uri=str(root / f"shards-{docs}"), hot_dir=root / "hot", max_rows=args.shard_rows
        ),
        worker=WorkerSettings(once=True, poll_interval_s=0.2),
        work_queue=WorkQueueSettings(claim_size=args.claim_size),
        mongo_options={"event_listeners": [counter]},
    )
    summary = await run_embed(job)
    assert summary.embedded == docs, summary
    return counter.commands


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=3000)
    parser.add_argument("--claim-size", type=int, default=1000)
    parser.add_argument("--shard-rows", type=int, default=50_000)
    args = parser.parse_args()
    small = max(1, args.docs // 3)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db = start(["-m", "embedder.cli", "dev-mongo", "--port", "0"], root / "mongo.log")
        tei = start(
            ["-m", "tests.support.instant_tei", "--port", "0", "--dimension", "768"],
            root / "tei.log",
        )
        try:
            started = time.perf_counter()
            runs = {
                n: await measure(db.address, tei.address, root, n, args) for n in (small, args.docs)
            }
            elapsed = time.perf_counter() - started
        finally:
            tei.stop()
            db.stop()
    print(
        f"machine: {platform.machine()}, Python {platform.python_version()}, MongoDB: mongoeco (memory engine)"
    )
    print(
        f"claim size {args.claim_size}, shard rows {args.shard_rows}; both runs took {elapsed:.1f}s"
    )
    for docs, commands in runs.items():
        total = sum(commands.values())
        detail = ", ".join(f"{name} {n}" for name, n in commands.most_common())
        print(
            f"{docs:>7} docs: {total:>3} round trips = {1000 * total / docs:5.2f} per 1,000 docs  ({detail})"
        )
    extra_docs = args.docs - small
    extra_trips = sum(runs[args.docs].values()) - sum(runs[small].values())
    fixed = sum(runs[small].values()) - extra_trips * small / extra_docs
    print(
        f"steady state: {1000 * extra_trips / extra_docs:.2f} round trips per 1,000 docs "
        f"(claim, read, mark, release), plus about {fixed:.0f} per run (start-up, end of queue, leaving)"
    )


if __name__ == "__main__":
    asyncio.run(main())

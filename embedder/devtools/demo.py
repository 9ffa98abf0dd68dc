"""``make demo``: the whole system on one machine, no GPU, no Docker, nothing downloaded.

Starts an embedded MongoDB-compatible server (mongoeco, SQLite engine) and ``embedder serve``
with the real CPU model (all-MiniLM-L6-v2), loads a generated tweet-like corpus, creates the
indexes, embeds with a progress bar, consolidates, verifies against MongoDB, and ends with a
report and a nearest-neighbour query over the result. Child processes are stopped on exit,
on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq

from embedder.devtools.processes import start_server
from embedder.devtools.sample_docs import load_samples, sample_docs
from embedder.fleet.routing import FleetSettings
from embedder.ids import decode_id
from embedder.ops.verify import verify
from embedder.queue import connection as mongo
from embedder.queue.output_location import record_output
from embedder.queue.spec import QueueSpec
from embedder.storage.consolidate import ConsolidateSettings, Consolidator
from embedder.storage.shards import ShardSettings
from embedder.worker.pipeline import WorkerSettings
from embedder.worker.runner import EmbedJob, run_embed

DEMO_DOCS = (
    3000  # mongoeco's SQLite engine slows as a collection grows: loading takes most of the time
)
QUERIES = [
    "streets under water after the storm",
    "my code crashes after the latest update",
    "a delicious homemade dinner",
    "shares tumble on wall street",
]


@dataclass
class Child:
    name: str
    process: subprocess.Popen[str]
    address: str


def main() -> None:
    root = Path(os.environ.get("EMBEDDER_DEMO_DIR", "demo-data"))
    children: list[Child] = []

    def stop(_signum: int, _frame: object) -> None:
        # Servers first: requests in flight to them then fail at once instead of being
        # waited for while the event loop winds down.
        _terminate(children)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    try:
        with _children(root, children) as (db, model):
            asyncio.run(_demo(root, db.address, model.address, started))
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped", file=sys.stderr)
        sys.exit(130)


async def _demo(root: Path, mongo_uri: str, tei_url: str, started: float) -> None:
    spec = QueueSpec(collection="tweets", database="demo")
    client = mongo.connect(mongo_uri)
    try:
        _step(f"loading {DEMO_DOCS} generated tweets into MongoDB")
        await load_samples(client, spec.database, spec.collection, sample_docs(DEMO_DOCS))
        await mongo.ensure_indexes(client, spec)

        _step("embedding (python embed_tweets.py --collection tweets --once ...)")
        embed_started = time.monotonic()
        summary = await run_embed(
            EmbedJob(
                mongo_uri=mongo_uri,
                queue=spec,
                fleet=FleetSettings(urls=(tei_url + "/embed",), batch_size=32, concurrency=4),
                shards=ShardSettings(
                    cold_uri=str(root / "shards"), hot_dir=root / "hot", max_rows=500
                ),
                worker=WorkerSettings(once=True, poll_interval_s=0.5),
            )
        )
        embed_s = time.monotonic() - embed_started

        _step("consolidating (python consolidate_embeddings.py)")
        report = Consolidator(
            ConsolidateSettings(
                shards_uri=str(root / "shards"),
                output_uri=str(root / "consolidated"),
                queue=spec.key,
            )
        ).run()
        # So that `embedder status` and `verify` find the output later (README: after the demo).
        await record_output(client, spec, consolidated=str(root / "consolidated"))
        _step("verifying against MongoDB (embedder verify)")
        checked = await verify(
            client, spec, str(root / "consolidated"), shards_uri=str(root / "shards")
        )
        neighbours = await _nearest(client, tei_url, root / "consolidated")
    finally:
        await client.close()

    print()
    print("=" * 72)
    print(
        f"embedded   {summary.embedded} docs in {embed_s:.1f}s ({summary.embedded / embed_s:.0f} docs/s, "
        f"{summary.tokens} tokens), {summary.failed} failed, {summary.shards} shards"
    )
    print(
        f"re-use     {summary.sent_to_fleet} distinct texts sent to the model; "
        f"{summary.reused_in_run} docs repeated a text and got its vector without asking"
    )
    print(
        f"output     {report.rows_out} rows in {len(report.files)} file(s) under {root / 'consolidated'} "
        f"({report.duplicates_dropped} duplicate rows dropped)"
    )
    print("verify     " + " | ".join(line.strip() for line in checked.lines()[:3]))
    print("nearest neighbours (cosine similarity, topic of the hit):")
    for query, hits in neighbours:
        print(f"  {query!r}")
        for score, topic, text in hits:
            print(f"     {score:.2f}  [{topic}]  {text}")
    print(f"total      {time.monotonic() - started:.0f}s")
    print("=" * 72)
    if not checked.ok:
        sys.exit(1)


async def _nearest(
    client: Any, tei_url: str, consolidated: Path
) -> list[tuple[str, list[tuple[float, str, str]]]]:
    table = pq.read_table(consolidated, columns=["_id", "_id_kind", "embedding"])
    matrix = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    ids = [
        decode_id(t, k)
        for t, k in zip(table["_id"].to_pylist(), table["_id_kind"].to_pylist(), strict=True)
    ]
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.post(tei_url + "/embed", json={"inputs": QUERIES})
        answer.raise_for_status()
    queries = np.asarray(answer.json(), dtype=np.float32)
    results = []
    for query, vector in zip(QUERIES, queries, strict=True):
        scores = matrix @ vector
        best = np.argsort(-scores)[:3]
        found = {
            d["_id"]: d
            async for d in client.demo.tweets.find({"_id": {"$in": [ids[i] for i in best]}})
        }
        results.append(
            (
                query,
                [(float(scores[i]), found[ids[i]]["topic"], found[ids[i]]["text"]) for i in best],
            )
        )
    return results


@contextlib.contextmanager
def _children(root: Path, children: list[Child]) -> Iterator[tuple[Child, Child]]:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        _step("starting an embedded MongoDB (mongoeco, SQLite engine)")
        children.append(
            _start(
                "dev-mongo",
                ["dev-mongo", "--port", "0", "--sqlite", str(root / "mongo.sqlite")],
                root,
            )
        )
        _step("starting embedder serve with all-MiniLM-L6-v2 on the CPU")
        children.append(_start("serve", ["serve", "--port", "0", "--backend", "onnx"], root))
        yield children[0], children[1]
    finally:
        _terminate(children)


def _terminate(children: list[Child]) -> None:
    for child in reversed(children):
        if child.process.poll() is None:
            child.process.terminate()
    for child in children:
        try:
            child.process.wait(5)
        except subprocess.TimeoutExpired:  # mongoeco can be deep in a long write
            child.process.kill()
            child.process.wait()


def _start(name: str, args: list[str], root: Path) -> Child:
    process, address = start_server(
        ["-m", "embedder.cli", *args],
        root / f"{name}.log",
        new_session=True,
        ready_timeout=float("inf"),  # a cold model download may take minutes
    )
    return Child(name, process, address)


def _step(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()

"""Running the embedder the way users do, and reading back what it left."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pymongo import AsyncMongoClient

from embedder.fleet.routing import FleetSettings
from embedder.ids import decode_id
from embedder.queue import connection as mongo
from embedder.queue.settings import WorkQueueSettings
from embedder.queue.spec import QueueSpec
from embedder.storage.shards import ShardSettings
from embedder.telemetry import Summary
from embedder.worker.pipeline import WorkerSettings
from embedder.worker.runner import EmbedJob, run_embed
from tests.support import corpus as corpora
from tests.support.corpus import Corpus
from tests.support.servers import ROOT, run_python


@dataclass
class Workspace:
    mongo_uri: str
    database: str
    root: Path
    collection: str = "tweets"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    def args(self, urls: Sequence[str], *extra: str, summary: str = "summary.json") -> list[str]:
        return [
            "embed_tweets.py",
            "--collection",
            self.collection,
            "--tei-urls",
            ",".join(u + "/embed" for u in urls),
            "--batch-size",
            "32",
            "--mongo-uri",
            self.mongo_uri,
            "--database",
            self.database,
            "--output-dir",
            str(self.shards),
            "--hot-dir",
            str(self.root / "hot"),
            "--summary-json",
            str(self.root / summary),
            "--poll-interval",
            "0.5",
            *extra,
        ]

    def command(self, name: str, *extra: str) -> list[str]:
        """``python -m embedder.cli <name>`` on this workspace's queue and directories."""
        return self.queue_command(name, "--shards-dir", str(self.shards), *extra)

    def queue_command(self, name: str, *extra: str) -> list[str]:
        """``python -m embedder.cli <name>`` on this workspace's queue (no directories)."""
        return [
            "-m",
            "embedder.cli",
            name,
            "--collection",
            self.collection,
            "--mongo-uri",
            self.mongo_uri,
            "--database",
            self.database,
            *extra,
        ]

    def popen(
        self,
        urls: Sequence[str],
        *extra: str,
        log: str = "worker.log",
        summary: str = "summary.json",
    ) -> subprocess.Popen[bytes]:
        handle = (self.root / log).open("wb")
        return subprocess.Popen(
            [sys.executable, *self.args(urls, *extra, summary=summary)],
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def run(
        self, urls: Sequence[str], *extra: str, timeout: float = 180, log: str = "worker.log"
    ) -> int:
        proc = self.popen(urls, *extra, log=log)
        return proc.wait(timeout)

    def consolidate(self, out: Path) -> subprocess.CompletedProcess[str]:
        """``python consolidate_embeddings.py`` from this workspace's shards into ``out``."""
        return run_python(
            [
                "consolidate_embeddings.py",
                "--shards-dir",
                str(self.shards),
                "--consolidated-dir",
                str(out),
            ]
        )

    async def burst(
        self,
        urls: Sequence[str],
        *,
        queue: QueueSpec | None = None,
        claim_size: int = 1000,
        fleet: FleetSettings | None = None,
    ) -> Summary:
        """One ``--once`` run of the worker in this process and event loop (arq's burst
        worker): for tests about what a run does, not about the process around it (signals,
        exit codes, the CLI's output keep to ``popen``). ``fleet`` replaces the default
        fleet of ``urls``."""
        spec = queue or QueueSpec(collection=self.collection, database=self.database)
        return await run_embed(
            EmbedJob(
                mongo_uri=self.mongo_uri,
                queue=spec,
                fleet=fleet or FleetSettings(urls=tuple(u + "/embed" for u in urls), batch_size=32),
                shards=ShardSettings(
                    cold_uri=str(self.shards), hot_dir=self.root / "hot", prefix=spec.target_field
                ),
                worker=WorkerSettings(once=True, poll_interval_s=0.5),
                work_queue=WorkQueueSettings(claim_size=claim_size),
                progress_bar=False,
            )
        )

    def has_shard(self) -> bool:
        return any(not p.name.startswith(".") for p in self.shards.glob("*.parquet"))

    async def wait_for(
        self,
        proc: subprocess.Popen[bytes],
        condition: Callable[[], bool],
        what: str,
        log: str = "worker.log",
    ) -> None:
        """``wait_until`` for a worker: fail at once, with its log, if it exits first."""

        def holds() -> bool:
            assert proc.poll() is None, (
                f"the worker exited while waiting for {what}:\n{self.log(log)}"
            )
            return condition()

        await wait_until(holds, what=what)

    def log(self, name: str = "worker.log") -> str:
        path = self.root / name
        return path.read_text(errors="replace") if path.exists() else ""

    def summary_text(self, name: str = "summary.json") -> str:
        path = self.root / name
        return path.read_text() if path.exists() else ""

    def summary(self, name: str = "summary.json") -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.root / name).read_text())
        return loaded

    def table(self) -> pa.Table:
        files = sorted(p for p in self.shards.glob("*.parquet") if not p.name.startswith("."))
        if not files:
            return pa.table({"_id": pa.array([], pa.string())})
        return pa.concat_tables(pq.read_table(f) for f in files)

    def rows_allowing_repeats(self) -> dict[Any, np.ndarray]:
        """Shard rows by id, where a doc may appear more than once (at-least-once before
        consolidation); every copy of a doc must hold the same vector."""
        table = self.table()
        rows: dict[Any, np.ndarray] = {}
        if table.num_rows == 0:
            return rows
        kinds = table["_id_kind"].to_pylist()
        vectors = table["embedding"].to_numpy(zero_copy_only=False)
        for text, kind, vector in zip(table["_id"].to_pylist(), kinds, vectors, strict=True):
            doc_id = decode_id(text, kind)
            if doc_id in rows:
                np.testing.assert_array_equal(rows[doc_id], vector)
            rows[doc_id] = np.asarray(vector)
        return rows

    def latest_rows(self) -> dict[Any, np.ndarray]:
        """The newest shard row of each doc (shards are named in time order): a doc whose text
        changed and was embedded again has an older row with another vector."""
        table = self.table()
        ids = [
            decode_id(t, k)
            for t, k in zip(table["_id"].to_pylist(), table["_id_kind"].to_pylist(), strict=True)
        ]
        vectors = table["embedding"].to_numpy(zero_copy_only=False)
        return {doc_id: np.asarray(v) for doc_id, v in zip(ids, vectors, strict=True)}

    def rows(self) -> dict[Any, np.ndarray]:
        """Shard rows by decoded id; raises if an id appears twice."""
        table = self.table()
        if table.num_rows == 0:
            return {}
        ids = [
            decode_id(t, k)
            for t, k in zip(table["_id"].to_pylist(), table["_id_kind"].to_pylist(), strict=True)
        ]
        vectors = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
        assert len(set(ids)) == len(ids), "an id appears in more than one shard row"
        return dict(zip(ids, vectors, strict=True))


async def seed(
    client: AsyncMongoClient[dict[str, Any]],
    database: str,
    corpus: Corpus,
    collection: str = "tweets",
    **spec: Any,
) -> QueueSpec:
    """Insert ``corpus`` and create the queue's indexes. In chunks: one insert of a thousand
    docs keeps a loaded mongoeco busy past pymongo's heartbeat, which then cancels it."""
    queue = QueueSpec(collection=collection, database=database, **spec)
    for start in range(0, len(corpus.docs), 100):
        await client[database][collection].insert_many(corpus.docs[start : start + 100])
    await mongo.ensure_indexes(client, queue)
    return queue


async def marks(client: AsyncMongoClient[dict[str, Any]], queue: QueueSpec) -> dict[Any, Any]:
    docs = client[queue.database][queue.collection].find({}, {queue.target_field: 1})
    return {d["_id"]: d.get(queue.target_field) async for d in docs}


def assert_complete(
    rows: dict[Any, np.ndarray], state: dict[Any, Any], corpus: corpora.Corpus, dim: int = 64
) -> None:
    """Every eligible doc marked done once with its vector in a shard; the rest as expected."""
    assert set(rows) == set(corpus.eligible)
    ids = list(corpus.eligible)
    expected = corpora.expected_vectors([corpus.eligible[i] for i in ids], dim)
    got = np.stack([rows[i] for i in ids])
    assert got.shape == (len(ids), dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    for doc_id in corpus.eligible:
        assert state[doc_id]["status"] == "done", state[doc_id]
        assert state[doc_id]["model"] == f"embedder/hash-{dim}"
        assert state[doc_id]["shard"].endswith(".parquet")
    for doc_id, reason in corpus.bad.items():
        assert state[doc_id]["status"] == "failed" and reason in state[doc_id]["reason"], state[
            doc_id
        ]
    for doc_id in corpus.ineligible:
        assert state[doc_id] is None


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], *, what: str, within: float = 60
) -> None:
    """Poll ``condition`` (plain or async) until it holds; fail naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        held = condition()
        if await held if inspect.isawaitable(held) else held:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")

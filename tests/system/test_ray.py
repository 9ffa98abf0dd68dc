"""embedder.clusters.ray_actors on a local Ray cluster (``ray start --head`` on the CPU, hash backend):
a run to completion, and an actor killed mid-run that Ray restarts, every doc once.

Ray is an optional extra (``pip install "embedder[ray]"``, a large install): without it these
tests skip.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient

from embedder.ids import decode_id
from tests.support import corpus as corpora
from tests.support.servers import ROOT, free_port, run_python
from tests.support.worker import Workspace, assert_complete, marks, seed, wait_until

pytest.importorskip("ray", reason='Ray is an optional extra: pip install "embedder[ray]"')

RAY = [sys.executable, "-m", "ray.scripts.scripts"]


@dataclass(frozen=True)
class RayCluster:
    address: str
    metrics_url: str  # Ray's Prometheus export, where the actors' gauges appear


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """A one-node Ray cluster with two CPUs and no GPU; stopped with the module."""
    root = tmp_path_factory.mktemp("ray")
    port, metrics_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    head = subprocess.Popen(
        [
            *RAY,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=false",
            f"--metrics-export-port={metrics_port}",
            f"--temp-dir={root}",
            "--disable-usage-stats",
        ],
        stdout=(root / "head.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert head.poll() is None, (root / "head.log").read_text()
            ready = subprocess.run(
                [*RAY, "status", f"--address={address}"],
                check=False,
                capture_output=True,
                timeout=30,
            )
            if ready.returncode == 0:
                break
            assert time.monotonic() < deadline, (root / "head.log").read_text()
            time.sleep(0.5)
        yield RayCluster(address, f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        head.terminate()  # --block: the head stops its raylet, GCS and workers with it
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()


def driver(ws: Workspace, address: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "EMBEDDER_MONGO_URI": ws.mongo_uri,
        "EMBEDDER_DATABASE": ws.database,
        "EMBEDDER_COLLECTION": ws.collection,
        "EMBEDDER_OUTPUT_DIR": str(ws.shards),
        "EMBEDDER_HOT_DIR": str(ws.root / "hot"),
        "EMBEDDER_BATCH_SIZE": "32",
        "EMBEDDER_CONCURRENCY": "1",
        "EMBEDDER_CLAIM_SIZE": "100",
        "EMBEDDER_SHARD_ROWS": "100",
        "EMBEDDER_POLL_INTERVAL": "0.5",
        "EMBEDDER_LEASE_TTL": "10",
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "embedder.clusters.ray_actors",
            f"--address={address}",
            "--actors=2",
            "--cpus-per-actor=1",
            "--backend=hash",
            "--server-args=--dimension 64 --simulate-batch-seconds 0.5",
            f"--log-dir={ws.root / 'ray-logs'}",
            "--status-interval=2",
        ],
        cwd=ROOT,
        env=env,
        stdout=(ws.root / "driver.log").open("wb"),
        stderr=subprocess.STDOUT,
    )


def actor_pid(ws: Workspace, index: int) -> int | None:
    """The pid of the actor's process, which each (re)started actor writes."""
    path = ws.root / "ray-logs" / f"actor-{index}.pid"
    return int(path.read_text()) if path.exists() else None


def logs(ws: Workspace) -> str:
    parts = [ws.log("driver.log")]
    for path in sorted((ws.root / "ray-logs").glob("*.log")):
        parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
    return "\n".join(parts)


def consolidate_and_verify(ws: Workspace, corpus: corpora.Corpus) -> dict[Any, Any]:
    import numpy as np
    import pyarrow.parquet as pq

    out = ws.root / "consolidated"
    done = ws.consolidate(out)
    assert done.returncode == 0, done.stderr
    verified = run_python(ws.command("verify", "--consolidated-dir", str(out)), timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    table = pq.read_table(sorted(out.glob("*.parquet")))
    ids = [
        decode_id(t, k)
        for t, k in zip(table["_id"].to_pylist(), table["_id_kind"].to_pylist(), strict=True)
    ]
    assert len(ids) == len(set(ids)) == len(corpus.eligible)
    vectors = table["embedding"].to_numpy(zero_copy_only=False)
    return {i: np.asarray(v) for i, v in zip(ids, vectors, strict=True)}


def exported_docs_embedded(metrics_url: str) -> float:
    """The actors' embedder_ray_docs_embedded gauges, summed, as Ray exports them."""
    text = httpx.get(metrics_url, timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ray_embedder_ray_docs_embedded"
    )


async def test_two_actors_embed_the_queue_to_completion(
    ray_cluster: RayCluster, ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    corpus = corpora.tweets(1000)
    queue = await seed(mongo, ws.database, corpus)

    proc = driver(ws, ray_cluster.address)

    def progress_exported() -> bool:
        assert proc.poll() is None, f"the run ended before Ray exported progress:\n{logs(ws)}"
        return exported_docs_embedded(ray_cluster.metrics_url) > 0

    await wait_until(progress_exported, what="progress in Ray's metrics", within=120)
    assert proc.wait(180) == 0, logs(ws)

    assert ws.log("driver.log").count("worker exited with 0") == 2, logs(ws)
    rows = consolidate_and_verify(ws, corpus)
    assert_complete(rows, await marks(mongo, queue), corpus)


async def test_an_actor_killed_mid_run_is_restarted_and_every_doc_is_embedded_once(
    ray_cluster: RayCluster, ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    corpus = corpora.tweets(800)
    queue = await seed(mongo, ws.database, corpus)
    docs = mongo[ws.database][ws.collection]

    proc = driver(ws, ray_cluster.address)

    async def some_marked() -> bool:
        assert proc.poll() is None, f"the run ended before the kill:\n{logs(ws)}"
        return (
            actor_pid(ws, 0) is not None
            and await docs.count_documents({f"{queue.target_field}.status": "done"}) >= 100
        )

    await wait_until(some_marked, what="100 docs marked", within=120)
    killed = actor_pid(ws, 0)
    assert killed is not None
    os.kill(killed, signal.SIGKILL)
    assert await docs.count_documents(queue.pending_query()) > 0, "nothing left to test"

    assert proc.wait(240) == 0, logs(ws)
    assert actor_pid(ws, 0) != killed, "the actor was not restarted"
    # The dead actor's worker got one SIGTERM and drained; its restart then finished.
    worker_log = (ws.root / "ray-logs" / "worker-0.log").read_text()
    assert worker_log.count("SIGTERM received: finishing in-flight work") == 1, logs(ws)
    assert "received again" not in worker_log, logs(ws)
    rows = consolidate_and_verify(ws, corpus)
    assert_complete(rows, await marks(mongo, queue), corpus)

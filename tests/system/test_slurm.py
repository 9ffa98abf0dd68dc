"""deploy/slurm on a real SLURM: a job array embeds a queue, survives scancel + resubmit, and
the time-limit signal drains a worker.

A one-node cluster (Debian's slurm-wlm and munge, started as root by ``tests.support.slurm_cluster``)
runs deploy/slurm/embed-array.sbatch unchanged but for the shape options a GPU-less test
machine needs; every task starts ``embedder serve --backend hash`` (slowed down like a GPU)
and a worker against the session's MongoDB.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from pymongo import AsyncMongoClient

from embedder.ids import decode_id
from tests.support import corpus as corpora
from tests.support import slurm_cluster
from tests.support.servers import ROOT, run_python
from tests.support.worker import Workspace, assert_complete, marks, seed, wait_until

pytestmark = pytest.mark.skipif(
    slurm_cluster.unavailable() is not None, reason=str(slurm_cluster.unavailable())
)

ARRAY_SCRIPT = ROOT / "deploy" / "slurm" / "embed-array.sbatch"
NODE_SCRIPT = ROOT / "deploy" / "slurm" / "embed-node.sbatch"
DOCS = 1000
DRAIN_TIMEOUT = 8  # below the test cluster's KillWait (20 s)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slurm_cluster.SlurmCluster]:
    started = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    yield started
    started.stop()


def worker_drain_is_bounded() -> bool:
    """Whether this worker bounds its drain (``--drain-timeout``, issue #12). scancel stops
    the servers with the worker, so requests not yet sent can never be answered: an
    unbounded drain waits for the fleet until KillWait's SIGKILL (nothing is lost, the
    leases expire), a bounded one marks what it has, releases the leases and exits 0."""
    answer = run_python(["-m", "embedder.cli", "embed", "--help"])
    return "--drain-timeout" in answer.stdout


def job_env(ws: Workspace, cluster: slurm_cluster.SlurmCluster) -> dict[str, str]:
    """What a user exports before sbatch (sbatch passes the environment on)."""
    return {
        **cluster.env,
        "EMBEDDER_SLURM_DIR": str(ROOT / "deploy" / "slurm"),
        "EMBEDDER_SLURM_BACKEND": "hash",
        "EMBEDDER_SLURM_COMMAND": f"{sys.executable} -m embedder.cli",
        "EMBEDDER_SLURM_SERVERS": "1",
        "EMBEDDER_SLURM_SERVER_ARGS": "--dimension 64 --simulate-batch-seconds 0.5",
        "EMBEDDER_SLURM_LOG_DIR": str(ws.root / "logs"),
        "EMBEDDER_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT),
        "EMBEDDER_MONGO_URI": ws.mongo_uri,
        "EMBEDDER_DATABASE": ws.database,
        "EMBEDDER_COLLECTION": ws.collection,
        "EMBEDDER_OUTPUT_DIR": str(ws.shards),
        "EMBEDDER_HOT_DIR": str(ws.root / "hot"),
        "EMBEDDER_BATCH_SIZE": "32",
        # One request at a time to a slow server: a worker holds a few batches, not the
        # whole queue, so a drain ends within KillWait with docs still pending.
        "EMBEDDER_CONCURRENCY": "1",
        "EMBEDDER_CLAIM_SIZE": "100",
        "EMBEDDER_SHARD_ROWS": "100",
        "EMBEDDER_POLL_INTERVAL": "0.5",
        "EMBEDDER_LEASE_TTL": "10",  # a killed worker's leases are taken over soon
        "PYTHONUNBUFFERED": "1",
    }


def submit(ws: Workspace, cluster: slurm_cluster.SlurmCluster, *, array: bool = True) -> str:
    (ws.root / "logs").mkdir(exist_ok=True)
    return cluster.sbatch(
        ARRAY_SCRIPT if array else NODE_SCRIPT,
        # The scripts' shapes are for GPU nodes; this machine has two cores and no GPU.
        *(["--array=0-1"] if array else []),
        "--gres=none",
        "--cpus-per-task=1",
        "--mem=1G",
        f"--output={ws.root / 'logs' / ('%x-%A_%a.out' if array else '%x-%j_0.out')}",
        f"--chdir={ROOT}",
        env=job_env(ws, cluster),
    )


def task_logs(ws: Workspace, job_id: str) -> str:
    """Every log of the job, whole: the lines asserted on come first, before the worker's."""
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')}"
        for p in sorted((ws.root / "logs").glob(f"*{job_id}_*"))
    )


def assert_completed(cluster: slurm_cluster.SlurmCluster, ws: Workspace, job_id: str) -> None:
    cluster.wait_gone(job_id, within=90)
    tasks = cluster.tasks(job_id)
    assert len(tasks) == 2, tasks
    assert all(t.state == "COMPLETED" and t.exit_code == "0:0" for t in tasks), (
        f"{tasks}\n{task_logs(ws, job_id)}"
    )


def consolidated_ids(out: Path) -> list[Any]:
    table = pq.read_table(sorted(out.glob("*.parquet")))
    return [
        decode_id(text, kind)
        for text, kind in zip(table["_id"].to_pylist(), table["_id_kind"].to_pylist(), strict=True)
    ]


def consolidate_and_verify(ws: Workspace, corpus: corpora.Corpus) -> dict[Any, np.ndarray]:
    out = ws.root / "consolidated"
    done = ws.consolidate(out)
    assert done.returncode == 0, done.stderr
    verified = run_python(
        ws.command("verify", "--consolidated-dir", str(out), "--json"), timeout=120
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    ids = consolidated_ids(out)
    assert len(ids) == len(set(ids)) == len(corpus.eligible)
    table = pq.read_table(sorted(out.glob("*.parquet")))
    vectors = table["embedding"].to_numpy(zero_copy_only=False)
    return {doc_id: np.asarray(v) for doc_id, v in zip(ids, vectors, strict=True)}


def status(ws: Workspace) -> dict[str, Any]:
    answer = run_python(ws.queue_command("status", "--json"))
    assert answer.returncode == 0, answer.stderr
    loaded: dict[str, Any] = json.loads(answer.stdout)
    return loaded


async def test_a_job_array_embeds_the_queue_to_completion(
    cluster: slurm_cluster.SlurmCluster,
    ws: Workspace,
    mongo: AsyncMongoClient[dict[str, Any]],
) -> None:
    corpus = corpora.tweets(DOCS)
    queue = await seed(mongo, ws.database, corpus)

    job = submit(ws, cluster)
    assert_completed(cluster, ws, job)

    logs = task_logs(ws, job)
    # Both tasks started their own server and ran a worker on the shared queue.
    assert logs.count("1 server(s) healthy") == 2, logs
    assert logs.count("worker exited with 0") == 2, logs
    rows = consolidate_and_verify(ws, corpus)
    assert_complete(rows, await marks(mongo, queue), corpus)
    assert status(ws)["pending"] == 0


async def test_scancel_mid_run_then_resubmit_embeds_every_doc_exactly_once(
    cluster: slurm_cluster.SlurmCluster,
    ws: Workspace,
    mongo: AsyncMongoClient[dict[str, Any]],
) -> None:
    corpus = corpora.tweets(DOCS)
    queue = await seed(mongo, ws.database, corpus)
    docs = mongo[ws.database][ws.collection]

    first = submit(ws, cluster)

    async def some_marked() -> bool:
        assert cluster.active(first), f"the array ended before scancel:\n{task_logs(ws, first)}"
        return await docs.count_documents({f"{queue.target_field}.status": "done"}) >= 150

    await wait_until(some_marked, what="150 docs marked", within=90)
    cluster.run("scancel", first)
    cluster.wait_gone(first, within=DRAIN_TIMEOUT + 40)

    tasks = cluster.tasks(first)
    assert {t.state for t in tasks} == {"CANCELLED"}, tasks
    logs = task_logs(ws, first)
    # scancel's TERM reached every worker once (the batch shell does not forward it again,
    # which would make the worker exit without draining) and each started to drain.
    assert logs.count("SIGTERM received: finishing in-flight work") == 2, logs
    assert "received again" not in logs, logs
    after_cancel = status(ws)
    assert after_cancel["pending"] > 0, "the array finished before scancel: nothing was tested"
    if worker_drain_is_bounded():
        # Drained within KillWait: marked what it had, released its leases, exited 0.
        assert logs.count("worker exited with 0") == 2, logs
        assert after_cancel["leases"] == 0, after_cancel

    second = submit(ws, cluster)
    assert_completed(cluster, ws, second)

    rows = consolidate_and_verify(ws, corpus)
    assert_complete(rows, await marks(mongo, queue), corpus)


async def test_the_time_limit_signal_drains_the_worker_through_the_batch_shell(
    cluster: slurm_cluster.SlurmCluster,
    ws: Workspace,
    mongo: AsyncMongoClient[dict[str, Any]],
) -> None:
    """``--signal=B:USR1@N`` reaches the batch shell only (as ``scancel --batch`` does here):
    the script turns it into one SIGTERM for the worker, and bounds the drain."""
    corpus = corpora.tweets(600)
    queue = await seed(mongo, ws.database, corpus)
    docs = mongo[ws.database][ws.collection]

    job = submit(ws, cluster, array=False)

    async def some_marked() -> bool:
        assert cluster.active(job), f"the job ended before the signal:\n{task_logs(ws, job)}"
        return await docs.count_documents({f"{queue.target_field}.status": "done"}) >= 100

    await wait_until(some_marked, what="100 docs marked", within=90)
    cluster.run("scancel", "--batch", "--signal=USR1", job)
    cluster.wait_gone(job, within=DRAIN_TIMEOUT + 15 + 30)

    logs = task_logs(ws, job)
    assert "USR1: draining the worker" in logs, logs
    assert logs.count("SIGTERM received: finishing in-flight work") == 1, logs
    assert "received again" not in logs, logs
    (task,) = cluster.tasks(job)
    assert (task.state, task.exit_code) == ("COMPLETED", "0:0"), f"{task}\n{logs}"
    assert "worker exited with 0" in logs, logs
    after = status(ws)
    assert after["pending"] > 0, "the job finished before the signal: nothing was tested"
    assert after["leases"] == 0, after

"""What grows with the number of workers on one queue, and with the size of the fleet.

1. MongoDB commands and claim conflicts per 1,000 docs with 1, 2, 4 and 8 worker processes
   on one queue: real ``embedder embed --once`` processes (``bench.counted_worker``: the CLI
   with pymongo's command monitoring, each process writing its own counts), against mongoeco's
   wire server (memory engine) and the instant 768-d TEI server. A claim conflict is a
   compare-and-set of the control document that lost (a ``findAndModify`` on its version that
   matched nothing); the loser re-reads the control document and tries again.
2. One worker's throughput against 1, 2, 4 and 8 simulated GPUs (``bench.sim_fleet``), each
   fleet's capacity measured alone first (the load generator of ``embedder autotune``,
   8 requests of 32 in flight per server), then the whole pipeline (in-memory queue, real
   Parquet shards, adaptive concurrency) on the same fleet.

    python -m bench.queue_scale [--docs 2000] [--claim-size 125] [--workers 1,2,4,8]

Commands and conflicts are counts: they do not depend on the machine's speed, except the
time-driven ones (heartbeats, the once-a-minute gauges) and how often workers collide, which
depends on how their claims interleave. Throughput does depend on it: compare only within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from pymongo import AsyncMongoClient

from bench.memory_queue import run_worker
from bench.sim_fleet import machine, running_fleet
from embedder.devtools.samples import generate
from embedder.fleet.endpoint import EndpointClient
from embedder.fleet.protocol import EmbedOptions
from embedder.fleet.routing import Fleet, FleetSettings
from embedder.ops import autotune
from embedder.queue import connection as mongo
from embedder.queue.spec import QueueSpec
from embedder.telemetry import Telemetry
from tests.support.servers import ROOT, start

WORKER_TIMEOUT_S = 900


@dataclass
class QueueRun:
    workers: int
    docs: int
    seconds: float
    commands: collections.Counter[str]
    cas_attempts: int
    cas_conflicts: int
    other_misses: int


def worker_command(
    counts: Path, *, uri: str, tei_url: str, spec: QueueSpec, hot: Path, claim_size: int
) -> list[str]:
    return [
        *(sys.executable, "-m", "bench.counted_worker", "--wait", str(counts), "embed"),
        *("--collection", spec.collection, "--database", spec.database, "--mongo-uri", uri),
        *("--tei-urls", tei_url, "--once", "--claim-size", str(claim_size)),
        *("--output-dir", str(hot.parent / "shards"), "--hot-dir", str(hot)),
        *("--poll-interval", "0.2", "--vector-cache-size", "0"),
    ]


async def seed(uri: str, spec: QueueSpec, count: int) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    docs = [
        {"_id": i, "lang": "en", "classified": True, "text": s.text}
        for i, s in enumerate(generate(count))
    ]
    try:
        for first in range(0, len(docs), 100):  # mongoeco is slow with large single inserts
            await client[spec.database][spec.collection].insert_many(docs[first : first + 100])
        await mongo.ensure_indexes(client, spec)
    finally:
        await client.close()


async def done_count(uri: str, spec: QueueSpec) -> int:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    try:
        return await client[spec.database][spec.collection].count_documents(
            {spec.status_path: "done"}
        )
    finally:
        await client.close()


def start_together(cmds: list[list[str]], root: Path) -> list[subprocess.Popen[bytes]]:
    """Start every worker, wait until each has imported everything, then let them all go."""
    procs = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=(root / f"worker{n}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        for n, cmd in enumerate(cmds)
    ]
    flags = [root / f"counts{n}.json.ready" for n in range(len(cmds))]
    deadline = time.monotonic() + 120
    while not all(f.exists() for f in flags):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a worker did not get ready; logs in {root}")
        time.sleep(0.05)  # polling files that the workers create, under a deadline
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.close()
    return procs


def queue_run(workers: int, docs: int, claim_size: int, tei_url: str, root: Path) -> QueueRun:
    root.mkdir()
    db = start(["-m", "embedder.cli", "dev-mongo", "--port", "0"], root / "mongo.log")
    try:
        spec = QueueSpec(collection="tweets", database="bench")
        asyncio.run(seed(db.address, spec, docs))
        cmds = [
            worker_command(
                root / f"counts{n}.json",
                uri=db.address,
                tei_url=tei_url,
                spec=spec,
                hot=root / f"hot{n}",
                claim_size=claim_size,
            )
            for n in range(workers)
        ]
        procs = start_together(cmds, root)
        started = time.perf_counter()
        codes = [p.wait(WORKER_TIMEOUT_S) for p in procs]
        seconds = time.perf_counter() - started
        if any(codes):
            raise RuntimeError(f"worker exit codes {codes}; logs in {root}")
        done = asyncio.run(done_count(db.address, spec))
        if done != docs:
            raise RuntimeError(f"{done} of {docs} docs marked done")
    finally:
        db.stop()
    run = QueueRun(workers, docs, seconds, collections.Counter(), 0, 0, 0)
    for n in range(workers):
        counts = orjson.loads((root / f"counts{n}.json").read_bytes())
        run.commands.update(counts["commands"])
        run.cas_attempts += counts["cas_attempts"]
        run.cas_conflicts += counts["cas_conflicts"]
        run.other_misses += counts["other_fam_misses"]
    # No shard sizes: the instant server answers one vector for every text, which compresses
    # to almost nothing (bench.consolidate_1m measures random vectors).
    return run


def per_k(n: int, docs: int) -> str:
    return f"{1000 * n / docs:.1f}"


def print_queue_runs(runs: list[QueueRun], claim_size: int) -> None:
    names = sorted({name for r in runs for name in r.commands}, key=lambda n: (n.split()[0], n))
    print(
        f"\nqueue: {runs[0].docs} docs, claim size {claim_size}; per 1,000 docs, all workers together"
    )
    print(
        "| workers | all commands | "
        + " | ".join(names)
        + " | CAS tries | CAS conflicts | other misses | seconds |"
    )
    print("|---:|---:|" + "---:|" * len(names) + "---:|---:|---:|---:|")
    for r in runs:
        cells = " | ".join(per_k(r.commands[name], r.docs) for name in names)
        print(
            f"| {r.workers} | {per_k(sum(r.commands.values()), r.docs)} | {cells} | "
            f"{per_k(r.cas_attempts, r.docs)} | {per_k(r.cas_conflicts, r.docs)} | "
            f"{per_k(r.other_misses, r.docs)} | {r.seconds:.1f} |"
        )
    print("\nraw counts (whole run):")
    for r in runs:
        detail = ", ".join(f"{name} {n}" for name, n in r.commands.most_common())
        print(
            f"  {r.workers} workers: {sum(r.commands.values())} ({detail}); "
            f"CAS {r.cas_attempts} tried, {r.cas_conflicts} lost"
        )


@dataclass
class FleetRun:
    servers: int
    capacity: float
    pipeline: float
    docs: int


async def fleet_run(servers: int, docs_per_server: int, root: Path) -> FleetRun:
    texts = [s.text for s in generate(docs_per_server * servers, seed=3)]
    with running_fleet([1.0] * servers, root) as urls:
        clients = [EndpointClient(u, httpx.AsyncClient(timeout=600)) for u in urls]
        cell = await autotune.measure_cell(
            clients,
            autotune.cycle_batches(texts[:4000], 32),
            lambda _texts, header: header or 0,
            batch_size=32,
            concurrency=8 * servers,
            warmup_s=1.0,
            duration_s=4.0,
            options=EmbedOptions(),
        )
        telemetry = Telemetry()
        fleet = await Fleet.connect(FleetSettings(urls=tuple(urls), batch_size=32), telemetry)
        try:
            _summary, elapsed = await run_worker(fleet, telemetry, texts, root / "pipeline")
        finally:
            await fleet.close()
    return FleetRun(servers, cell.docs_per_s, len(texts) / elapsed, len(texts))


def print_fleet_runs(runs: list[FleetRun]) -> None:
    print("\nfleet: simulated GPUs of speed 1 (5 ms + 170 us per token a batch), one worker")
    print(
        "| servers | docs | fleet alone (docs/s) | pipeline (docs/s) | per server | pipeline / fleet alone |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(
            f"| {r.servers} | {r.docs} | {r.capacity:,.0f} | {r.pipeline:,.0f} | "
            f"{r.pipeline / r.servers:,.0f} | {r.pipeline / r.capacity:.2f} |"
        )


def counts_list(text: str) -> list[int]:
    return [int(n) for n in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--claim-size", type=int, default=125)
    parser.add_argument("--workers", type=counts_list, default=[1, 2, 4, 8])
    parser.add_argument("--servers", type=counts_list, default=[1, 2, 4, 8])
    parser.add_argument("--docs-per-server", type=int, default=3000)
    parser.add_argument("--skip-queue", action="store_true")
    parser.add_argument("--skip-fleet", action="store_true")
    args = parser.parse_args()
    print(machine() + "; MongoDB: mongoeco (memory engine)")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_queue:
            tei_server = start(
                ["-m", "tests.support.instant_tei", "--port", "0", "--dimension", "768"],
                tmp / "tei.log",
            )
            try:
                runs = [
                    queue_run(n, args.docs, args.claim_size, tei_server.address, tmp / f"q{n}")
                    for n in args.workers
                ]
            finally:
                tei_server.stop()
            print_queue_runs(runs, args.claim_size)
        if not args.skip_fleet:
            fleet_runs = []
            for n in args.servers:
                (tmp / f"f{n}").mkdir()
                fleet_runs.append(asyncio.run(fleet_run(n, args.docs_per_server, tmp / f"f{n}")))
            print_fleet_runs(fleet_runs)


if __name__ == "__main__":
    main()

"""The client side's ceiling: how many docs/s one worker process moves when neither a GPU
nor MongoDB is the limit.

An instant TEI-compatible server (precomputed 768-d vectors in TEI's JSON, its own process)
and an in-memory queue stand in for the fleet and MongoDB; the shards are real Parquet on
local disk. The baseline, measured in the same run, is the HTTP client alone (Fleet.embed on
the same batches at the same concurrency), so the ratio is what the pipeline costs on top.

    python -m bench.pipeline_ceiling [--docs 100000] [--batch-size 32] [--concurrency 8] [--reuse]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from pathlib import Path

from bench.memory_queue import run_worker
from embedder import (
    Fleet,
    FleetSettings,
    LeaseTracker,
    Telemetry,
    TextReuse,
    VectorCache,
    embed_key,
)
from embedder.devtools.samples import generate
from tests.support.servers import start


async def client_alone(settings: FleetSettings, texts: list[str]) -> float:
    fleet = await Fleet.connect(settings, Telemetry())
    batches = [texts[i : i + fleet.batch_size] for i in range(0, len(texts), fleet.batch_size)]
    pending = iter(batches)

    async def drain() -> None:
        for batch in pending:
            await fleet.embed(batch)

    started = time.perf_counter()
    await asyncio.gather(*(drain() for _ in range(settings.concurrency or 8)))
    elapsed = time.perf_counter() - started
    await fleet.close()
    return len(texts) / elapsed


async def whole_pipeline(
    settings: FleetSettings, texts: list[str], out: Path, *, reuse: bool = False
) -> tuple[float, int]:
    telemetry = Telemetry()
    fleet = await Fleet.connect(settings, telemetry)
    cache = None
    try:
        text_reuse: TextReuse[LeaseTracker] | None = None
        if reuse:
            key = embed_key(fleet.info, settings.options, fleet.dimension)
            cache = VectorCache(
                out / "cache.sqlite", embed_key=key, dimension=fleet.dimension, max_rows=10**7
            )
            text_reuse = TextReuse(cache, 256 << 20, fleet.dimension)
        summary, elapsed = await run_worker(fleet, telemetry, texts, out, reuse=text_reuse)
    finally:
        await fleet.close()
        if cache is not None:
            await cache.aclose()
    return len(texts) / elapsed, summary.shards


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="also run with text re-use; every text made distinct, so it measures the cost only",
    )
    args = parser.parse_args()
    texts = [s.text for s in generate(args.docs, seed=1)]
    if args.reuse:
        texts = [f"{text} #{number}" for number, text in enumerate(texts)]
    with tempfile.TemporaryDirectory() as tmp:
        server = start(
            ["-m", "tests.support.instant_tei", "--port", "0", "--dimension", "768"],
            Path(tmp) / "server.log",
        )
        try:
            settings = FleetSettings(
                urls=(server.address,), batch_size=args.batch_size, concurrency=args.concurrency
            )
            baseline = await client_alone(settings, texts)
            pipeline, shards = await whole_pipeline(settings, texts, Path(tmp) / "plain")
            if args.reuse:
                reusing, _ = await whole_pipeline(settings, texts, Path(tmp) / "reuse", reuse=True)
        finally:
            server.stop()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"docs: {args.docs}, 768-d, batch {args.batch_size}, {args.concurrency} requests in flight"
    )
    print(f"{'':28}{'docs/s':>10}")
    print(f"{'HTTP client alone':28}{baseline:>10,.0f}")
    print(f"{'whole pipeline (+shards)':28}{pipeline:>10,.0f}   ({shards} shards)")
    print(f"pipeline / client alone: {pipeline / baseline:.2f}")
    if args.reuse:
        print(f"{'whole pipeline + re-use':28}{reusing:>10,.0f}   (all texts distinct)")
        print(f"with re-use / without: {reusing / pipeline:.2f}")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())

"""Embedding each distinct text once: GPU requests saved and docs/s, with and without.

A tweet-like corpus where a stated share of the texts repeat an earlier one verbatim
(copypasta, bots, quotes), through the whole pipeline (in-memory queue, real Parquet shards)
against two simulated GPUs, three times in one run: without re-use, with re-use and an empty
vector cache, and again with the cache the second run filled (re-queued docs, or a re-run).

    python -m bench.text_reuse [--docs 20000] [--duplicate-rate 0.3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.memory_queue import run_worker
from bench.sim_fleet import machine, running_fleet
from embedder import (
    Fleet,
    FleetSettings,
    LeaseTracker,
    Summary,
    Telemetry,
    TextReuse,
    VectorCache,
    embed_key,
)
from embedder.devtools.samples import generate


async def one_run(
    urls: list[str], texts: list[str], out: Path, *, reuse: bool, cache_path: Path
) -> tuple[Summary, float]:
    telemetry = Telemetry()
    fleet = await Fleet.connect(FleetSettings(urls=tuple(urls)), telemetry)
    cache = None
    try:
        text_reuse: TextReuse[LeaseTracker] | None = None
        if reuse:
            key = embed_key(fleet.info, fleet.settings.options, fleet.dimension)
            cache = VectorCache(
                cache_path, embed_key=key, dimension=fleet.dimension, max_rows=2_000_000
            )
            text_reuse = TextReuse(cache, 256 << 20, fleet.dimension)
        return await run_worker(fleet, telemetry, texts, out, reuse=text_reuse)
    finally:
        await fleet.close()
        if cache is not None:
            await cache.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--duplicate-rate", type=float, default=0.3)
    args = parser.parse_args()
    texts = [s.text for s in generate(args.docs, seed=5, duplicate_rate=args.duplicate_rate)]
    distinct = len(set(texts))
    runs = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with running_fleet((1.0, 1.0), tmp) as urls:
            cache = tmp / "cache.sqlite"
            for name, reuse in (
                ("no re-use", False),
                ("re-use, empty cache", True),
                ("re-use, cache filled", True),
            ):
                summary, seconds = await one_run(
                    urls, texts, tmp / name.replace(" ", "-"), reuse=reuse, cache_path=cache
                )
                runs.append((name, summary, seconds))
    print(machine())
    print(
        f"corpus: {args.docs} tweet-like docs, {distinct} distinct texts "
        f"({1 - distinct / args.docs:.1%} are repeats); two simulated GPUs, batch 32"
    )
    print(
        "| run | docs/s | texts sent | requests sent | requests saved | "
        "reused in run | reused from cache |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    baseline = runs[0][1].requests
    for name, summary, seconds in runs:
        saved = 1 - summary.requests / baseline if baseline else 0.0
        print(
            f"| {name} | {args.docs / seconds:,.0f} | {summary.sent_to_fleet:,} | "
            f"{summary.requests:,} | {saved:.0%} | {summary.reused_in_run:,} | "
            f"{summary.reused_from_cache:,} |"
        )


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())

"""Adaptive concurrency against the best fixed setting and the seed's, on a simulated fleet.

Four TEI-compatible servers (``embedder serve --backend hash`` with a simulated GPU: TEI's
permits, FIFO queue and token-budget batches, a service time per batch that grows with its
tokens), one of them half as fast. In one run:

1. each endpoint's unloaded batch latency (one request of the batch size at a time);
2. ``embedder autotune``'s sweep over the fleet, which names the best fixed setting;
3. the seed's setting (batch 32, 256 requests in flight, no limit of ours) through the same
   load generator: the seed's script, in effect;
4. the whole pipeline (in-memory queue, real Parquet shards) with adaptive limits, with the
   best fixed setting, and with ``--concurrency 256``, side by side.

    python -m bench.adaptive_fleet [--docs 20000] [--duration 3]
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from bench.memory_queue import run_worker
from bench.sim_fleet import machine, running_fleet
from embedder.devtools.samples import generate
from embedder.fleet import tei_protocol as tei
from embedder.fleet.endpoint import EndpointClient
from embedder.fleet.routing import Fleet, FleetSettings
from embedder.ops import autotune
from embedder.telemetry import Telemetry

SPEEDS = (1.0, 1.0, 1.0, 0.5)


class RecordingTelemetry(Telemetry):
    """Keeps every request's latency, per endpoint, for exact percentiles."""

    def __init__(self) -> None:
        super().__init__()
        self.latencies: dict[str, list[float]] = {}

    def request_ok(self, endpoint: str, inputs: int, seconds: float, tokens: int | None) -> None:
        super().request_ok(endpoint, inputs, seconds, tokens)
        self.latencies.setdefault(endpoint, []).append(seconds)


@dataclass
class Run:
    name: str
    docs_per_s: float
    p50_s: float
    p95_s: float
    worst_ratio: float  # the worst endpoint's p95 over its unloaded batch latency
    overloaded: int
    limits: str


async def unloaded_latency(url: str, texts: list[str], batch: int) -> float:
    async with httpx.AsyncClient(timeout=60) as http:
        client = EndpointClient(url, http)
        seconds = []
        for start_at in range(0, 20 * batch, batch):
            chunk = texts[start_at : start_at + batch]
            seconds.append((await client.embed(chunk, tei.EmbedOptions())).seconds)
    return statistics.median(seconds[2:])


async def pipeline(
    name: str,
    *,
    urls: list[str],
    texts: list[str],
    batch: int,
    concurrency: int | None,
    unloaded: dict[str, float],
    out: Path,
) -> Run:
    telemetry = RecordingTelemetry()
    fleet = await Fleet.connect(
        FleetSettings(urls=tuple(urls), batch_size=batch, concurrency=concurrency), telemetry
    )
    try:
        summary, elapsed = await run_worker(fleet, telemetry, texts, out / name)
        limits = ", ".join(str(e.input_limit) for e in fleet.endpoints)
    finally:
        await fleet.close()
    everything = np.concatenate([np.array(v) for v in telemetry.latencies.values()])
    ratios = [
        float(np.percentile(v, 95)) / unloaded[endpoint]
        for endpoint, v in telemetry.latencies.items()
    ]
    return Run(
        name,
        len(texts) / elapsed,
        float(np.percentile(everything, 50)),
        float(np.percentile(everything, 95)),
        max(ratios),
        summary.errors_by_kind.get("overloaded", 0),
        limits,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per autotune cell")
    parser.add_argument("--p95-slo", type=float, default=1.0)
    args = parser.parse_args()
    texts = [s.text for s in generate(args.docs, seed=3)]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with running_fleet(SPEEDS, tmp) as urls:
            unloaded = {
                EndpointClient(u, httpx.AsyncClient()).url: await unloaded_latency(u, texts, 32)
                for u in urls
            }
            sweep_settings = autotune.SweepSettings(
                batch_sizes=(16, 32),
                concurrencies=(1, 2, 4, 8, 16, 32, 64, 128),
                warmup_s=1.0,
                duration_s=args.duration,
                p95_slo_s=args.p95_slo,
            )
            report = await autotune.sweep(urls, texts[:4000], sweep_settings)
            seed = await autotune.measure_cell(
                [EndpointClient(u, httpx.AsyncClient(timeout=600)) for u in urls],
                autotune.cycle_batches(texts[:4000], 32),
                lambda _texts, header: header or 0,
                batch_size=32,
                concurrency=256,
                warmup_s=2.0,
                duration_s=max(10.0, args.duration),
                options=tei.EmbedOptions(),
            )
            best = report.best
            assert best is not None, report.advice
            per_endpoint = max(1, math.ceil(best.concurrency / len(urls)))
            run = functools.partial(pipeline, urls=urls, texts=texts, unloaded=unloaded, out=tmp)
            runs = [
                await run("adaptive", batch=32, concurrency=None),
                await run("best-fixed", batch=best.batch_size, concurrency=per_endpoint),
                await run("fixed-256", batch=32, concurrency=256),
            ]
    print(machine())
    print(
        f"fleet: 4 simulated servers, speeds {SPEEDS}; unloaded latency of a 32-doc request: "
        + ", ".join(f"{v * 1000:.0f} ms" for v in unloaded.values())
    )
    print("\nautotune sweep (fleet-wide concurrency):")
    print(autotune.markdown_table(report.cells))
    print(
        f"best fixed: batch {best.batch_size}, concurrency {best.concurrency} "
        f"({per_endpoint} per endpoint in the pipeline)"
    )
    print("\nthe seed's setting through the same load generator (batch 32, 256 in flight):")
    print(autotune.markdown_table([seed]))
    print(f"  errors by status: {seed.errors_by_status}")
    print(f"\npipeline, {args.docs} docs:")
    print(
        f"| {'setting':<12} | docs/s | vs best fixed | p50 (s) | p95 (s) | worst p95/unloaded "
        "| 429s | final limits (inputs) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    reference = runs[1].docs_per_s
    for result in runs:
        print(
            f"| {result.name:<12} | {result.docs_per_s:,.0f} | {result.docs_per_s / reference:.2f} | "
            f"{result.p50_s:.3f} | {result.p95_s:.3f} | {result.worst_ratio:.2f} | {result.overloaded} | "
            f"{result.limits} |"
        )


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())

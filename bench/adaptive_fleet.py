"""Adaptive concurrency against the best fixed setting and the seed's, on a simulated fleet.

Four TEI-compatible servers (``embedder serve --backend hash`` with a simulated GPU: TEI's
permits, FIFO queue and token-budget batches, a service time per batch that grows with its
tokens), one of them half as fast. In one run:

1. each endpoint's unloaded batch latency (``embedder autotune`` on that endpoint alone, one
   request of the batch size at a time);
2. ``embedder autotune``'s sweep over the fleet, which names the best fixed setting;
3. the seed's setting (batch 32, 256 requests in flight, no limit of ours) through the same
   command: the seed's script, in effect;
4. the whole pipeline (in-memory queue, real Parquet shards) with adaptive limits, with the
   best fixed setting, and with ``--concurrency 256``, side by side.

    python -m bench.adaptive_fleet [--docs 20000] [--duration 3] [--seed-duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.memory_queue import run_worker
from bench.sim_fleet import machine, running_fleet
from embedder import Fleet, FleetSettings, Telemetry
from embedder.devtools.samples import generate

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


@dataclass(frozen=True)
class Sweep:
    """One ``embedder autotune`` command line: its grid and timing."""

    batch_sizes: str
    concurrencies: str
    warmup_s: float
    duration_s: float
    p95_slo_s: float = 1e9

    def arguments(self) -> list[str]:
        return [
            *("--batch-sizes", self.batch_sizes, "--concurrency-levels", self.concurrencies),
            *("--warmup", str(self.warmup_s), "--duration", str(self.duration_s)),
            *("--p95-slo", str(self.p95_slo_s)),
        ]


async def autotune(
    urls: list[str], sample: Path, report: Path, sweep: Sweep
) -> tuple[dict[str, Any], str]:
    """``embedder autotune`` over ``urls`` with texts from ``sample``: its JSON and Markdown
    reports. Exit status 1 (no setting met the SLO) is a finding, not a failure."""
    command = ["-m", "embedder", "autotune", "--tei-urls", ",".join(urls), "--file", str(sample)]
    command += ["--sample", "4000", "--report", str(report), *sweep.arguments()]
    process = await asyncio.create_subprocess_exec(
        sys.executable, *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    if process.returncode not in (0, 1):
        raise SystemExit(f"embedder autotune failed: {stderr[-2000:].decode()}")
    markdown = report.with_suffix(".md").read_text()
    return json.loads(report.with_suffix(".json").read_text()), markdown


async def unloaded_latency(
    url: str, sample: Path, report: Path, duration_s: float
) -> tuple[str, float]:
    """The endpoint's name as the fleet reports it and its p50 at one 32-doc request at a time."""
    result, _ = await autotune([url], sample, report, Sweep("32", "1", 0.2, duration_s))
    return result["endpoints"][0], result["cells"][0]["p50_s"]


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
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before a cell counts")
    parser.add_argument("--p95-slo", type=float, default=1.0)
    parser.add_argument(
        "--seed-duration", type=float, default=10.0, help="seconds measuring the seed's setting"
    )
    args = parser.parse_args()
    texts = [s.text for s in generate(args.docs, seed=3)]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sample = tmp / "sample.jsonl"
        sample.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:4000]))
        with running_fleet(SPEEDS, tmp) as urls:
            unloaded = dict(
                [
                    await unloaded_latency(u, sample, tmp / f"unloaded-{i}", args.duration / 2)
                    for i, u in enumerate(urls)
                ]
            )
            # Concurrency per endpoint, as `embed --concurrency`: 4 servers, 4 to 128 in flight.
            grid = Sweep("16,32", "1,2,4,8,16,32", args.warmup, args.duration, args.p95_slo)
            sweep, sweep_markdown = await autotune(urls, sample, tmp / "sweep", grid)
            seeds = Sweep("32", str(256 // len(urls)), 2 * args.warmup, args.seed_duration)
            seed, _ = await autotune(urls, sample, tmp / "seed", seeds)
            best = sweep["best"]
            assert best is not None, sweep["advice"]
            per_endpoint = best["concurrency"]
            run = functools.partial(pipeline, urls=urls, texts=texts, unloaded=unloaded, out=tmp)
            runs = [
                await run("adaptive", batch=32, concurrency=None),
                await run("best-fixed", batch=best["batch_size"], concurrency=per_endpoint),
                await run("fixed-256", batch=32, concurrency=256),
            ]
    print(machine())
    print(
        f"fleet: 4 simulated servers, speeds {SPEEDS}; unloaded latency of a 32-doc request: "
        + ", ".join(f"{v * 1000:.0f} ms" for v in unloaded.values())
    )
    print("\nautotune sweep (concurrency per endpoint):")
    print(sweep_markdown)
    print(
        f"best fixed: batch {best['batch_size']}, concurrency {per_endpoint} per endpoint: "
        f"{sweep['embed_command']}"
    )
    cell = seed["cells"][0]
    print(
        "\nthe seed's setting through the same command (batch 32, 256 in flight): "
        f"{cell['docs_per_s']:,.1f} docs/s, p50 {cell['p50_s']:.3f} s, p95 {cell['p95_s']:.3f} s, "
        f"errors by status: {cell['errors_by_status']}"
    )
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

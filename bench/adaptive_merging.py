"""Adaptive concurrency where a deeper queue pays: short texts on GPUs that batch them better.

Two simulated GPUs whose batch time is mostly fixed (40 ms + 20 us per token): a request of 32
short tweets leaves the GPU mostly idle, and TEI's merging of queued requests into one batch
multiplies throughput. Pacing alone keeps one request waiting, so no merging; the queue-depth
probe (after a minute of steady running) must find that deeper pays. The adaptive worker runs a
warm-up long enough to pass its first probe, then the measured run; a fixed
``--concurrency 8`` runs the same measured docs on the same fleet.

    python -m bench.adaptive_merging [--warmup-docs 120000] [--docs 30000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.memory_queue import run_worker
from bench.sim_fleet import machine, running_fleet
from embedder import Fleet, FleetSettings, Telemetry
from embedder.devtools.samples import generate


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warmup-docs", type=int, default=120_000)
    parser.add_argument("--docs", type=int, default=30_000)
    args = parser.parse_args()
    warmup = [s.text for s in generate(args.warmup_docs, seed=3)]
    measured = [s.text for s in generate(args.docs, seed=4)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with running_fleet((1.0, 1.0), tmp, batch_seconds=0.04, token_seconds=0.00002) as urls:
            for name, concurrency in (("adaptive", None), ("fixed 8", 8), ("fixed 1", 1)):
                telemetry = Telemetry()
                fleet = await Fleet.connect(
                    FleetSettings(urls=tuple(urls), concurrency=concurrency), telemetry
                )
                try:
                    if concurrency is None:
                        _, seconds = await run_worker(fleet, Telemetry(), warmup, tmp / "warm")
                        rows.append(("adaptive, warm-up", len(warmup) / seconds, ""))
                    _, seconds = await run_worker(fleet, Telemetry(), measured, tmp / name)
                    shares = [
                        f"{sample.value:g}"
                        for metric in telemetry.queue_share.collect()
                        for sample in metric.samples
                    ]
                    rows.append((name, len(measured) / seconds, ", ".join(shares)))
                finally:
                    await fleet.close()
    print(machine())
    print("two simulated GPUs, 40 ms + 20 us per token per batch; batch 32 tweet-like texts")
    print("| run | docs/s | vs fixed 8 | queue share at the end |")
    print("|---|---:|---:|---|")
    reference = next(r for n, r, _ in rows if n == "fixed 8")
    for name, rate, settled in rows:
        print(f"| {name} | {rate:,.0f} | {rate / reference:.2f} | {settled} |")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())

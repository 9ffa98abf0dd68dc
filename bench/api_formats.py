"""What the wire format costs one worker process: TEI's ``/embed`` with JSON floats (today's
path) against the OpenAI route with base64 vectors, at batch 32 and 128, 768-d.

One instant server (precomputed answers in both formats, its own process) stands in for a
fleet that is never the limit; the queue is in memory and the shards are real Parquet on local
disk (as in ``bench.pipeline_ceiling``). Per format: the HTTP client alone (Fleet.embed), and
the whole worker pipeline in this one process, in docs/s of wall time and in docs per CPU-second
of this process (what one free core would give: the figure that holds on a loaded machine).

    python -m bench.api_formats [--docs 100000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.pipeline_ceiling import client_alone, whole_pipeline
from embedder import FleetSettings
from embedder.devtools.samples import generate
from tests.support.servers import start


@dataclass(frozen=True)
class Form:
    name: str
    scheme: str  # "" probes the server: TEI, spoken to on /embed
    batch_size: int


FORMS = (
    Form("JSON /embed, batch 32", "", 32),
    Form("base64 OpenAI, batch 32", "openai+", 32),
    Form("base64 OpenAI, batch 128", "openai+", 128),
)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    texts = [s.text for s in generate(args.docs, seed=1)]
    figures: list[tuple[Form, float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = start(
            ["-m", "tests.support.instant_tei", "--port", "0", "--dimension", "768"],
            Path(tmp) / "server.log",
        )
        try:
            for number, form in enumerate(FORMS):
                settings = FleetSettings(
                    urls=(form.scheme + server.address,),
                    batch_size=form.batch_size,
                    concurrency=args.concurrency,
                )
                alone = await client_alone(settings, texts)
                cpu = time.process_time()
                pipeline, _ = await whole_pipeline(settings, texts, Path(tmp) / str(number))
                per_cpu_s = len(texts) / (time.process_time() - cpu)
                figures.append((form, alone, pipeline, per_cpu_s))
        finally:
            server.stop()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"docs: {args.docs}, 768-d, {args.concurrency} requests in flight, one worker process")
    print(
        "| format | client alone, docs/s | pipeline, docs/s | pipeline, docs per CPU-s "
        "| per CPU-s vs JSON@32 |"
    )
    print("|---|---:|---:|---:|---:|")
    today = figures[0][3]
    for form, alone, pipeline, per_cpu_s in figures:
        print(
            f"| {form.name} | {alone:,.0f} | {pipeline:,.0f} | {per_cpu_s:,.0f} "
            f"| {per_cpu_s / today:.2f} |"
        )


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())

"""``embedder serve`` under concurrent load against the same model called in-process.

Same texts, same machine, same run. The in-process baseline tokenises and embeds with the
backend directly, at the best of a few batch sizes; the server is loaded by concurrent
clients sending TEI's default client batch (32). Target: the server keeps >= 85% of the
direct throughput.

    python -m bench.serve_throughput [--texts 4096] [--concurrency 8] [--backend onnx]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from pathlib import Path

import httpx

from embedder.devtools.samples import generate
from embedder.serve.backends import Backend, HashBackend, OnnxMiniLM
from tests.support.servers import start


def direct(backend: Backend, texts: list[str], batch: int) -> tuple[float, float]:
    backend.embed([t.ids for t in backend.tokenize(texts[:batch])])  # warm-up
    started = time.perf_counter()
    tokens = 0
    for first in range(0, len(texts), batch):
        encoded = backend.tokenize(texts[first : first + batch])
        tokens += sum(len(t) for t in encoded)
        backend.embed([t.ids for t in encoded])
    elapsed = time.perf_counter() - started
    return len(texts) / elapsed, tokens / elapsed


async def served(
    url: str, texts: list[str], concurrency: int, batch: int
) -> tuple[float, float, int]:
    batches = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    pending = iter(batches)
    tokens = 0
    refused = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens, refused
        for inputs in pending:
            answer = await http.post(url + "/embed", json={"inputs": inputs})
            if answer.status_code == 429:
                refused += 1
            answer.raise_for_status()
            tokens += int(answer.headers["x-compute-tokens"])  # TEI's header, as /embed is its path

    async with httpx.AsyncClient(timeout=120) as http:
        await http.post(url + "/embed", json={"inputs": texts[:batch]})  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return len(texts) / elapsed, tokens / elapsed, refused


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=4096)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--backend", choices=["onnx", "hash"], default="onnx")
    args = parser.parse_args()
    texts = [s.text for s in generate(args.texts, seed=11)]
    backend: Backend = OnnxMiniLM() if args.backend == "onnx" else HashBackend(384)
    baselines = {batch: direct(backend, texts, batch) for batch in (32, 128, 512)}
    best_batch, (direct_docs, direct_tokens) = max(baselines.items(), key=lambda item: item[1][0])
    del backend  # free its threads before the server starts
    with tempfile.TemporaryDirectory() as tmp:
        server = start(
            ["-m", "embedder.cli", "serve", "--port", "0", "--backend", args.backend],
            Path(tmp) / "s.log",
        )
        try:
            docs, tokens, refused = asyncio.run(served(server.address, texts, args.concurrency, 32))
        finally:
            server.stop()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"backend {args.backend}; {args.texts} tweet-like texts"
    )
    for batch, (d, t) in baselines.items():
        print(f"  in-process, batch {batch:<4}       {d:8.0f} docs/s {t:9.0f} tokens/s")
    print(
        f"  embedder serve, {args.concurrency} clients x 32 {docs:8.0f} docs/s {tokens:9.0f} tokens/s  "
        f"(429s: {refused})"
    )
    print(
        f"server / best in-process (batch {best_batch}): {docs / direct_docs:.2f} in docs/s, "
        f"{tokens / direct_tokens:.2f} in tokens/s"
    )


if __name__ == "__main__":
    main()

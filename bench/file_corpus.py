"""A Wikipedia-sized file corpus embedded from a file, and what a multi-GB NDJSON costs to start.

1. A generated Wikipedia-like corpus (250,010 articles of 2-6 KB, deterministic) as NDJSON,
   embedded by ``embedder embed-files`` (one worker process, adaptive concurrency, batch 32)
   against a simulated fleet of 16 GPUs (``bench.sim_fleet``: ``embedder serve --backend hash``
   with a service time per batch, 1024-d vectors as Qwen3-Embedding-0.6B gives). The fleet's
   capacity is measured alone first, in the same run (``embedder autotune``'s load generator,
   8 requests of 32 in flight per server, on the corpus's own texts). Then ``consolidate
   --output-dir`` and ``export`` to ``.npy`` and the seed's pickle, whose checks must pass.
   Figures: docs/s from the worker's start to its exit as a fraction of the fleet alone; the
   worker's and the export's peak RSS.
2. A generated NDJSON of ``--big-gb`` GB: the time from starting ``embed-files --limit 1000``
   to the first request any server receives, that run's peak RSS, and the cost of the offsets
   pass (the streaming pass that cuts a plain NDJSON into chunks) per GB.

    python -m bench.file_corpus [--rows 250010] [--servers 16] [--big-gb 2]

It prints the figures; it judges nothing (an export whose checks fail stops it).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson

from bench.sim_fleet import machine, running_fleet
from embedder.files import CorpusReader, open_source
from embedder.files.plan import Selection, build_plan
from embedder.fleet.endpoint import EndpointClient
from embedder.fleet.protocol import EmbedOptions
from embedder.ops import autotune
from tests.support.servers import ROOT

# A simulated GPU: a 32-article request (512 tokens each after truncation) takes ~1.2 s, so
# 16 of them serve ~420 docs/s: 250,010 articles in ten minutes, the seed user's target.
BATCH_SECONDS = 0.03
TOKEN_SECONDS = 0.00007
_PEAK = re.compile(rb"^peak_rss_bytes (\d+)$", re.MULTILINE)
_MIB = 1 << 20


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss: int
    output: str


# -- the corpus -----------------------------------------------------------------------------


def articles(rows: int, seed: int = 0) -> Iterator[bytes]:
    """``rows`` NDJSON lines ``{"title", "text"}`` with 2-6 KB texts, the same for a seed.

    Texts are sentences drawn from a fixed pool of made-up words, so they read like prose to a
    tokenizer (700-ish words an article) and cost little to make.
    """
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    weights = np.linspace(2.0, 0.1, len(letters))
    weights /= weights.sum()
    vocabulary = [
        "".join(rng.choice(letters, size=int(n), p=weights)) for n in rng.integers(2, 11, 6000)
    ]
    pool = []
    for _ in range(4096):
        words = [vocabulary[i] for i in rng.integers(0, len(vocabulary), rng.integers(8, 21))]
        pool.append(" ".join(words).capitalize() + ".")
    mean = sum(map(len, pool)) / len(pool) + 1
    for first in range(0, rows, 10_000):
        count = min(10_000, rows - first)
        targets = rng.integers(2048, 6144, count)
        sentences = np.maximum(1, (targets / mean).astype(np.int64))
        picks = np.split(
            rng.integers(0, len(pool), int(sentences.sum())), np.cumsum(sentences)[:-1]
        )
        for offset, chosen in enumerate(picks):
            number = first + offset
            title = f"Article {number}"
            text = f"{title} is article number {number}. " + " ".join([pool[i] for i in chosen])
            yield orjson.dumps({"title": title, "text": text}) + b"\n"


def write_corpus(path: Path, rows: int) -> float:
    """Writes the corpus; returns the seconds it took."""
    started = time.perf_counter()
    with path.open("wb") as sink:
        for line in articles(rows):
            sink.write(line)
    return time.perf_counter() - started


def write_big(path: Path, size: int) -> int:
    """An NDJSON of at least ``size`` bytes: a 32 MB block of articles, repeated. Lines."""
    block = b"".join(articles(max(1, min(8_000, size // 4_000 + 1)), seed=1))
    lines_per_block = block.count(b"\n")
    lines = 0
    with path.open("wb") as sink:
        while sink.tell() < size:
            sink.write(block)
            lines += lines_per_block
    return lines


# -- running the commands -------------------------------------------------------------------


def measured(args: Sequence[str], log: Path) -> Measured:
    """``python -m bench.peak_rss embedder.cli <args>``: its wall time and peak RSS; exits the
    benchmark when the command fails."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bench.peak_rss", "embedder.cli", *args],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    log.write_bytes(done.stdout + done.stderr)
    peak = _PEAK.search(done.stdout)
    if done.returncode != 0 or peak is None:
        raise SystemExit(
            f"embedder {args[0]} failed ({done.returncode}); see {log}:\n"
            + (done.stdout + done.stderr)[-3000:].decode(errors="replace")
        )
    return Measured(seconds, int(peak.group(1)), done.stdout.decode(errors="replace"))


async def fleet_alone(urls: list[str], texts: list[str], servers: int, duration_s: float) -> float:
    """The fleet's docs/s under ``embedder autotune``'s load generator, nothing else running."""
    async with httpx.AsyncClient(timeout=600) as http:
        clients = [EndpointClient(u, http) for u in urls]
        cell = await autotune.measure_cell(
            clients,
            autotune.cycle_batches(texts, 32),
            lambda _texts, header: header or 0,
            batch_size=32,
            concurrency=8 * servers,
            warmup_s=min(2.0, duration_s / 2),
            duration_s=duration_s,
            options=EmbedOptions(),
        )
    if not cell.docs_per_s:
        raise SystemExit(
            f"no request finished within {duration_s:g} s of measuring the fleet alone "
            f"(p50 {cell.p50_s:.2f} s): give a longer --capacity-seconds"
        )
    return cell.docs_per_s


async def requests_received(http: httpx.AsyncClient, url: str) -> float:
    """``te_request_count`` of one server (its embed requests, counted on arrival)."""
    answer = await http.get(url + "/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in answer.text.splitlines()
        if line.startswith("te_request_count{")
    )


async def first_request(args: Sequence[str], urls: list[str], log: Path) -> tuple[float, Measured]:
    """Start ``embedder <args>``; the seconds until a server receives its first request (the
    servers polled in turn, one every 5 ms), and the finished run."""
    async with httpx.AsyncClient(timeout=10) as http:
        before = [await requests_received(http, u) for u in urls]
        started = time.perf_counter()
        run = asyncio.create_task(asyncio.to_thread(measured, args, log))
        seen: float | None = None
        turn = 0
        while seen is None and not run.done():
            index = turn % len(urls)
            if await requests_received(http, urls[index]) > before[index]:
                seen = time.perf_counter() - started
            turn += 1
            await asyncio.sleep(0.005)
        result = await run
    if seen is None:
        raise SystemExit(f"no request reached the fleet; see {log}")
    return seen, result


def offsets_pass(path: Path, chunk_rows: int) -> float:
    """Seconds for the plan of the whole file: the streaming pass that finds its chunks' byte
    offsets."""
    source = open_source(str(path))
    started = time.perf_counter()
    with CorpusReader(source) as reader:
        build_plan(reader, Selection(), chunk_rows)
    return time.perf_counter() - started


# -- the benchmark --------------------------------------------------------------------------


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=250_010)
    parser.add_argument("--servers", type=int, default=16)
    parser.add_argument("--dimension", type=int, default=1024)
    parser.add_argument("--batch-seconds", type=float, default=BATCH_SECONDS)
    parser.add_argument("--token-seconds", type=float, default=TOKEN_SECONDS)
    parser.add_argument("--capacity-seconds", type=float, default=10.0, help="measured alone")
    parser.add_argument("--chunk-rows", type=int, default=2000)
    parser.add_argument("--big-gb", type=float, default=2.0, help="size of the big NDJSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="file-corpus-") as tmp_name:
        tmp = Path(tmp_name)
        corpus = tmp / "wiki.jsonl"
        made = write_corpus(corpus, args.rows)
        size = corpus.stat().st_size
        print(machine())
        print(
            f"corpus: {args.rows:,} articles, NDJSON of {size / 1e9:.2f} GB "
            f"({size / args.rows / 1024:.1f} KiB a line), generated in {made:.1f} s"
        )
        sample = [orjson.loads(line)["text"] for line in _head(corpus, 4000)]
        with running_fleet(
            [1.0] * args.servers,
            tmp,
            args.dimension,
            batch_seconds=args.batch_seconds,
            token_seconds=args.token_seconds,
        ) as urls:
            print(
                f"fleet: {args.servers} simulated GPUs ({args.batch_seconds * 1000:.0f} ms + "
                f"{args.token_seconds * 1e6:.0f} us per token a batch), {args.dimension}-d"
            )
            capacity = await fleet_alone(urls, sample, args.servers, args.capacity_seconds)
            print(
                f"fleet alone: {capacity:,.0f} docs/s (8 requests of 32 in flight per server, "
                f"{args.capacity_seconds:g} s measured)"
            )
            out = tmp / "out"
            fleet = ",".join(urls)
            embed = measured(
                [
                    *("embed-files", "--input", str(corpus), "--output-dir", str(out)),
                    *("--hot-dir", str(tmp / "hot"), "--tei-urls", fleet),
                    *("--chunk-rows", str(args.chunk_rows)),
                ],
                tmp / "embed.log",
            )
            rate = args.rows / embed.seconds
            print("| run | rows | seconds | docs/s | / fleet alone | peak RSS |")
            print("|---|---:|---:|---:|---:|---:|")
            print(
                f"| embed-files, start to exit | {args.rows:,} | {embed.seconds:.1f} | "
                f"{rate:,.0f} | {rate / capacity:.2f} | {embed.peak_rss / _MIB:,.0f} MiB |"
            )
            big = tmp / "big.jsonl"
            lines = write_big(big, int(args.big_gb * 1e9))
            big_size = big.stat().st_size
            seen, limited = await first_request(
                [
                    *("embed-files", "--input", str(big), "--limit", "1000"),
                    *("--output-dir", str(tmp / "limited"), "--hot-dir", str(tmp / "hot")),
                    *("--tei-urls", fleet, "--chunk-rows", str(args.chunk_rows)),
                ],
                urls,
                tmp / "limited.log",
            )
        consolidated = measured(["consolidate", "--output-dir", str(out)], tmp / "consolidate.log")
        print(f"consolidate --output-dir: {consolidated.seconds:.1f} s")
        exported = measured(
            [
                *("export", "--consolidated-dir", str(out / "consolidated")),
                *("--npy", str(tmp / "wiki.npy"), "--pickle", str(tmp / "wiki.pkl")),
                *("--expect-rows", str(args.rows)),
            ],
            tmp / "export.log",
        )
        print(exported.output.splitlines()[0])
        print(
            f"export to .npy and pickle: {exported.seconds:.1f} s, "
            f"peak RSS {exported.peak_rss / _MIB:,.0f} MiB"
        )
        print(f"big NDJSON: {big_size / 1e9:.2f} GB, {lines:,} lines")
        print(
            f"--limit 1000: first request after {seen:.2f} s, done in {limited.seconds:.1f} s, "
            f"peak RSS {limited.peak_rss / _MIB:,.0f} MiB"
        )
        seconds = offsets_pass(big, args.chunk_rows)
        print(
            f"offsets pass: {big_size / 1e9:.2f} GB in {seconds:.2f} s = "
            f"{seconds / (big_size / 1e9):.2f} s per GB"
        )


def _head(path: Path, count: int) -> list[bytes]:
    with path.open("rb") as lines:
        return [line for _, line in zip(range(count), lines, strict=False)]


if __name__ == "__main__":
    asyncio.run(main())

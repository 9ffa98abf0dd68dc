"""Every benchmark in bench/ runs: each at a tiny size, in its own process, printing its figures.

Only that it runs and reports is asserted (exit 0, each figure line present), never a timing:
the figures themselves are measured at full size and recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

# The repository root, wherever under tests/ this file sits.
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "bench" / "RESULTS.md").exists())
BENCH = ROOT / "bench"


@dataclass(frozen=True)
class Smoke:
    module: str
    arguments: tuple[str, ...]
    figures: tuple[str, ...]  # regular expressions, each matching one line of the output


# The slowest first: they run a few at a time.
SMOKES = (
    Smoke(
        "file_corpus",
        (
            *("--rows", "200", "--servers", "2", "--dimension", "32", "--chunk-rows", "50"),
            *("--capacity-seconds", "3", "--big-gb", "0.005"),
            *("--batch-seconds", "0.005", "--token-seconds", "0.00001"),
        ),
        (
            r"^fleet alone: [\d,]+ docs/s",
            r"^\| embed-files, start to exit \| 200 \| [\d.]+ \| [\d,]+ \| [\d.]+ \| [\d,]+ MiB \|$",
            r"^export: OK: \(200, 32\) float32 in corpus order from 200 rows",
            r"^export to \.npy and pickle: [\d.]+ s, peak RSS [\d,]+ MiB$",
            r"^--limit 1000: first request after [\d.]+ s, done in [\d.]+ s, peak RSS [\d,]+ MiB$",
            r"^offsets pass: [\d.]+ GB in [\d.]+ s = [\d.]+ s per GB$",
        ),
    ),
    Smoke(
        "adaptive_fleet",
        (
            *("--docs", "400", "--duration", "0.2", "--warmup", "0.05"),
            *("--seed-duration", "0.3", "--p95-slo", "60"),
        ),
        (
            r"^\| +16 \| +1 \| [\d,.]+ \|",
            r"^best fixed: batch \d+, concurrency \d+ per endpoint: embedder embed --tei-urls \S+ "
            r"--batch-size \d+ --concurrency \d+$",
            r"^the seed's setting through the same command .* docs/s, p50 [\d.]+ s",
            r"^\| adaptive +\| [\d,]+ \| [\d.]+ \|",
            r"^\| best-fixed +\| [\d,]+ \| 1\.00 \|",
            r"^\| fixed-256 +\| [\d,]+ \| [\d.]+ \|",
        ),
    ),
    Smoke(
        "start_to_exit",
        (
            *("--docs", "200", "--fleet-docs", "200"),
            *("--capacity-seconds", "0.3", "--warmup", "0.1"),
        ),
        (
            r"^capacity alone: [\d,.]+ docs/s \(batch 32, \d+ requests in flight per server\)$",
            r"^\| 200 \| auto \| [\d.]+ \| [\d,.]+ \| [\d.]+ \| [\d.]+ \|$",
            r"^\| 200 \| fixed \d+ \| [\d.]+ \| [\d,.]+ \| [\d.]+ \| [\d.]+ \|$",
            r"^\| 200 \| auto \|( -?[\d.]+ \|){8} ",
            r"^four simulated servers, speeds \(1\.0, 1\.0, 1\.0, 0\.5\)$",
        ),
    ),
    Smoke(
        "queue_scale",
        (
            *("--docs", "200", "--claim-size", "50", "--workers", "1,2"),
            *("--servers", "1", "--docs-per-server", "300"),
        ),
        (
            r"^\| 1 \| [\d.]+ \|",
            r"^\| 2 \| [\d.]+ \|",
            r"^\| 1 \| 300 \| [\d,]+ \| [\d,]+ \| [\d,]+ \| [\d.]+ \|$",
        ),
    ),
    Smoke(
        "processes",
        ("--docs", "1000"),
        (
            r"^\| 1 \| [\d,]+ \| 1\.00 \| [\d.]+ \| [\d.]+ \|$",
            r"^\| 2 \| [\d,]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \|$",
        ),
    ),
    Smoke(
        "mongo_round_trips",
        ("--docs", "300", "--claim-size", "100"),
        (
            r"^ +100 docs: +\d+ round trips = +[\d.]+ per 1,000 docs",
            r"^ +300 docs: +\d+ round trips = +[\d.]+ per 1,000 docs",
            r"^steady state: [\d.]+ round trips per 1,000 docs",
        ),
    ),
    Smoke(
        "pipeline_ceiling",
        ("--docs", "2000", "--reuse"),
        (
            r"^HTTP client alone +[\d,]+$",
            r"^whole pipeline \(\+shards\) +[\d,]+ +\(\d+ shards\)$",
            r"^with re-use / without: [\d.]+$",
        ),
    ),
    Smoke(
        "api_formats",
        ("--docs", "2000"),
        (
            r"^\| JSON /embed, batch 32 \| [\d,]+ \| [\d,]+ \| [\d,]+ \| 1\.00 \|$",
            r"^\| base64 OpenAI, batch 32 \| [\d,]+ \| [\d,]+ \| [\d,]+ \| [\d.]+ \|$",
            r"^\| base64 OpenAI, batch 128 \| [\d,]+ \| [\d,]+ \| [\d,]+ \| [\d.]+ \|$",
        ),
    ),
    Smoke(
        "adaptive_merging",
        ("--warmup-docs", "300", "--docs", "300"),
        (
            r"^\| adaptive, warm-up \| [\d,]+ \| [\d.]+ \| +\|$",
            r"^\| adaptive \| [\d,]+ \| [\d.]+ \| [\d.]+, [\d.]+ \|$",
            r"^\| fixed 8 \| [\d,]+ \| 1\.00 \| +\|$",
        ),
    ),
    Smoke(
        "text_reuse",
        ("--docs", "600"),
        (
            r"^\| no re-use \| [\d,]+ \| 600 \| [\d,]+ \| 0% \| 0 \| 0 \|$",
            r"^\| re-use, empty cache \| [\d,]+ \| [\d,]+ \| [\d,]+ \| \d+% \|",
            r"^\| re-use, cache filled \| [\d,]+ \| 0 \| 0 \| 100% \| 0 \| 600 \|$",
        ),
    ),
    Smoke(
        "dedup_memory",
        ("--rows", "4000", "--shards", "4"),
        (
            r"^peak RSS of the run: +\d+ MiB$",
            r"^peak RSS with nothing to merge: +\d+ MiB$",
            r"^output rows: 2,000 \(duplicates dropped: 2,000\)$",
        ),
    ),
    Smoke(
        "worker_memory",
        ("--docs", "300", "--text-kb", "2"),
        (r"^peak RSS of the run: +[\d,]+ MiB$", r"^run: [\d.]+ s \([\d,]+ docs/s\)$"),
    ),
    Smoke(
        "consolidate_1m",
        ("--rows", "2000", "--shards", "10", "--dimension", "8"),
        (
            r"^plain pyarrow copy +[\d.]+ +[\d,]+ +\d+ +\d+$",
            r"^embedder consolidate +[\d.]+ +[\d,]+ +\d+ +\d+$",
            r"^consolidate / plain copy time: [\d.]+; duplicates dropped: 40; output rows: 1960$",
        ),
    ),
    Smoke(
        "serve_throughput",
        ("--texts", "128", "--backend", "hash"),
        (
            r"^ +in-process, batch 512 +\d+ docs/s +\d+ tokens/s$",
            r"^ +embedder serve, 8 clients x 32 +\d+ docs/s +\d+ tokens/s +\(429s: \d+\)$",
            r"^server / best in-process \(batch \d+\): [\d.]+ in docs/s",
        ),
    ),
)
# Modules of bench/ that are pieces of the benchmarks above, not benchmarks of their own.
PIECES = {
    "counted_worker",
    "memory_embed",
    "memory_queue",
    "peak_rss",
    "plain_copy",
    "shard_corpus",
    "sim_fleet",
}


def test_every_benchmark_has_a_smoke_run() -> None:
    modules = {p.stem for p in BENCH.glob("*.py") if p.stem != "__init__"}
    assert modules - PIECES == {s.module for s in SMOKES}


def run(smoke: Smoke) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"bench.{smoke.module}", *smoke.arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture(scope="module")
def outputs() -> dict[str, subprocess.CompletedProcess[str]]:
    """Every smoke run, a few at a time: most of a tiny run is waiting for servers to start."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip((s.module for s in SMOKES), pool.map(run, SMOKES), strict=True))


@pytest.mark.parametrize("smoke", SMOKES, ids=lambda s: s.module)
def test_benchmark_runs_and_prints_its_figures(
    smoke: Smoke, outputs: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    done = outputs[smoke.module]
    assert done.returncode == 0, done.stderr[-3000:]
    for figure in smoke.figures:
        assert re.search(figure, done.stdout, re.MULTILINE), (figure, done.stdout)

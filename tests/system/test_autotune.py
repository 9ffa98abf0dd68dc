"""``embedder autotune`` against a simulated fleet whose best throughput is known exactly.

The simulated GPUs spend a fixed time per token and nothing per batch, and every text is
exactly 32 tokens, so a server embeds 1 / (32 x token_seconds) docs/s however requests are
batched: the fleet's true best is the sum of that over its servers.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from tests.support import corpus as corpora
from tests.support.servers import FaultTei, run_python
from tests.support.worker import Workspace, seed

TOKEN_SECONDS = (0.00005, 0.0001)  # one server half as fast as the other
TOKENS_PER_TEXT = 32  # 30 words and the two special tokens
TRUE_BEST = sum(1 / (TOKENS_PER_TEXT * s) for s in TOKEN_SECONDS)  # 937.5 docs/s


def fleet(tei_factory: Callable[..., FaultTei]) -> list[str]:
    return [
        tei_factory("--token-seconds", str(seconds), "--dimension", "16").url
        for seconds in TOKEN_SECONDS
    ]


def texts_file(tmp_path: Path) -> Path:
    rng = random.Random(7)
    words = [f"w{i}" for i in range(2000)]
    path = tmp_path / "texts.txt"
    path.write_text(
        "".join(" ".join(rng.choices(words, k=30)) + "\n" for _ in range(300)), encoding="utf-8"
    )
    return path


def autotune(urls: list[str], texts: Path, report: Path, *extra: str) -> tuple[int, str]:
    done = run_python(
        [
            "-m",
            "embedder.cli",
            "autotune",
            "--tei-urls",
            ",".join(urls),
            "--file",
            str(texts),
            "--warmup",
            "0.3",
            "--report",
            str(report),
            *extra,
        ],
        timeout=180,
    )
    return done.returncode, done.stdout + done.stderr


def test_autotune_picks_a_setting_near_the_true_best_that_meets_the_slo(
    tei_factory: Callable[..., FaultTei], tmp_path: Path
) -> None:
    urls = fleet(tei_factory)
    code, output = autotune(
        urls,
        texts_file(tmp_path),
        tmp_path / "report",
        *("--batch-sizes", "8,32", "--concurrency-levels", "1,2,4,8"),
        *("--duration", "1.5", "--p95-slo", "0.5"),
    )
    assert code == 0, output
    report: dict[str, Any] = json.loads((tmp_path / "report.json").read_text())
    best = report["best"]
    assert best is not None, report["advice"]
    assert best["docs_per_s"] >= 0.9 * TRUE_BEST, (best, TRUE_BEST)
    assert best["errors"] == 0 and best["p95_s"] <= 0.5
    # The seed's table, on stdout and in the Markdown file.
    header = "| Batch Size | Concurrency | Docs/s | Tok/s | p50 (s) | p95 (s) | Errors | Total Time (s) |"
    assert header in output
    markdown = (tmp_path / "report.md").read_text()
    assert header in markdown and f"**Best: batch {best['batch_size']}" in markdown
    cells = report["cells"]
    assert {(c["batch_size"], c["concurrency"]) for c in cells} <= {
        (b, c) for b in (8, 32) for c in (1, 2, 4, 8)
    }
    # Tokens come from x-compute-tokens: 32 per text.
    for cell in cells:
        assert abs(cell["tokens_per_s"] - TOKENS_PER_TEXT * cell["docs_per_s"]) < 1e-6 * max(
            1.0, cell["tokens_per_s"]
        )
    # Concurrency is per endpoint, as embed --concurrency means it: at 1, each server has a
    # request of its own, so the fleet does far more than one server alone (at most 2/3).
    lonely = next(c for c in cells if c["batch_size"] == 32 and c["concurrency"] == 1)
    assert lonely["docs_per_s"] > 0.75 * TRUE_BEST, lonely
    # It ends with the embed command line that runs the best setting.
    command = (
        f"embedder embed --tei-urls {','.join(urls)} --batch-size {best['batch_size']} "
        f"--concurrency {best['concurrency']}"
    )
    assert report["embed_command"] == command
    assert markdown.rstrip().endswith(command) and f"run it: {command}" in output


def test_autotune_says_so_when_no_setting_meets_the_slo(
    tei_factory: Callable[..., FaultTei], tmp_path: Path
) -> None:
    urls = fleet(tei_factory)
    # One request of 8 texts takes 8 x 32 x 50 us = 12.8 ms of compute alone: 5 ms is out
    # of reach for any setting.
    code, output = autotune(
        urls,
        texts_file(tmp_path),
        tmp_path / "report",
        *("--batch-sizes", "8", "--concurrency-levels", "1,2"),
        *("--duration", "1", "--p95-slo", "0.005"),
    )
    assert code == 1, output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["best"] is None
    advice = " ".join(report["advice"])
    assert "no setting meets p95 <= 0.005 s" in advice
    assert "time to compute one request" in advice and "--max-batch-tokens" in advice
    assert "no setting meets" in output


async def test_autotune_samples_its_texts_from_the_collection(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    corpus = corpora.tweets(120)
    await seed(mongo, ws.database, corpus)
    tei = tei_factory()
    done = run_python(
        [
            *ws.queue_command("autotune", "--tei-urls", tei.url, "--sample", "50"),
            *("--batch-sizes", "8", "--concurrency-levels", "2", "--warmup", "0.2"),
            *("--duration", "0.5", "--report", str(ws.root / "report")),
        ],
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((ws.root / "report.json").read_text())
    assert report["best"]["docs_per_s"] > 0
    assert report["embed_command"] == (
        f"embedder embed --collection tweets --database {ws.database} --tei-urls {tei.url} "
        "--batch-size 8 --concurrency 2"
    )
    # Every text sent is a text of the collection; docs without a usable text were left out.
    received = tei.texts()
    stored = {d["text"] for d in corpus.docs if isinstance(d.get("text"), str)}
    assert received and received <= {t for t in stored if t.strip()}

"""Shards for the consolidation benchmarks, written by the worker's own ``ShardWriter`` (so
they always have the current schema), and a step measured in a process of its own."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from embedder import ShardMetadata, ShardSettings, ShardWriter

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
MODEL = "bench/model"


def write_shards(directory: Path, id_lists: Iterable[list[int]], dimension: int) -> None:
    """One shard of random unit vectors per list of ids; shard ``i`` is claim ``i + 1``, so a
    later shard's row of an id wins."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-hot-") as hot:
        writer = ShardWriter(
            ShardSettings(cold_uri=str(directory), hot_dir=Path(hot), max_rows=1 << 62),
            owner="bench",
            dimension=dimension,
            metadata=ShardMetadata(model_id=MODEL, dimension=dimension, normalize=True),
        )
        for index, ids in enumerate(id_lists):
            vectors = rng.standard_normal((len(ids), dimension), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            raw = rng.bytes(16 * len(ids))
            hashes = [raw[start : start + 16] for start in range(0, len(raw), 16)]
            at = T0 + dt.timedelta(seconds=index)
            writer.append(ids, vectors, at, hashes, claim_seqs=[index + 1] * len(ids))
            writer.roll()


def measure(args: list[str]) -> tuple[float, int, str]:
    """Run ``python -m bench.peak_rss ARGS``: seconds, peak RSS in bytes, and its stderr."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bench.peak_rss", *args], check=False, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{args} failed: {done.stderr[-2000:]}")
    peak = int(done.stdout.strip().splitlines()[-1].split()[-1])
    return elapsed, peak, done.stderr

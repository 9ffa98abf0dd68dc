"""Consolidating 1,000,000 rows of 768-d vectors spread over 1,000 shards, 2% duplicates.

Prints rows/s, MB/s and peak memory of ``embedder consolidate`` beside a plain pyarrow
read-and-write of the same shards (``bench.plain_copy``), measured in the same run, each in
a process of its own. Targets: within 1.5x of the plain copy's time, peak memory < 1 GiB.

    python -m bench.consolidate_1m [--rows 1000000] [--shards 1000] [--dimension 768] [--dir PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bench.shard_corpus import measure, write_shards


def shard_ids(rows: int, shards: int, duplicate_rate: float) -> tuple[list[list[int]], int]:
    """Ids per shard and how many are distinct: ``duplicate_rate`` of all rows repeat an id of
    an earlier shard."""
    rng = np.random.default_rng(0)
    per_shard = rows // shards
    unique = int(rows * (1 - duplicate_rate))
    next_id = 0
    id_lists = []
    for index in range(shards):
        fresh = min(per_shard, max(0, unique - next_id))
        if index == shards - 1:
            fresh = unique - next_id
        ids = list(range(next_id, next_id + fresh))
        next_id += fresh
        repeats = (
            per_shard - fresh if index < shards - 1 else rows - (per_shard * (shards - 1)) - fresh
        )
        if repeats > 0:
            ids += rng.integers(0, max(1, next_id), repeats).tolist()
        id_lists.append(ids)
    return id_lists, unique


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=1_000)
    parser.add_argument("--dimension", type=int, default=768)
    parser.add_argument("--dir", type=Path, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(dir=args.dir, prefix="consolidate-bench-"))
    try:
        started = time.perf_counter()
        id_lists, unique = shard_ids(args.rows, args.shards, 0.02)
        write_shards(root / "shards", id_lists, args.dimension)
        input_bytes = sum(p.stat().st_size for p in (root / "shards").glob("*.parquet"))
        print(
            f"made {args.shards} shards, {args.rows} rows ({unique} distinct ids), "
            f"{input_bytes / 1e6:.0f} MB in {time.perf_counter() - started:.0f}s",
            flush=True,
        )
        os.sync()
        copy_s, copy_peak, _ = measure(
            ["bench.plain_copy", str(root / "shards"), str(root / "copy")]
        )
        shutil.rmtree(root / "copy")
        os.sync()
        cons_s, cons_peak, log = measure(
            [
                "embedder.cli",
                "consolidate",
                "--shards-dir",
                str(root / "shards"),
                "--consolidated-dir",
                str(root / "out"),
                "--work-dir",
                str(root),
            ]
        )
        out_rows = sum(
            pq.ParquetFile(p).metadata.num_rows for p in (root / "out").glob("*.parquet")
        )
        assert out_rows == unique, (out_rows, unique)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mb = input_bytes / 1e6
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"{'':30}{'seconds':>9}{'rows/s':>11}{'MB/s':>8}{'peak MiB':>10}")
    print(
        f"{'plain pyarrow copy':30}{copy_s:>9.1f}{args.rows / copy_s:>11,.0f}{mb / copy_s:>8.0f}"
        f"{copy_peak / 2**20:>10.0f}"
    )
    print(
        f"{'embedder consolidate':30}{cons_s:>9.1f}{args.rows / cons_s:>11,.0f}{mb / cons_s:>8.0f}"
        f"{cons_peak / 2**20:>10.0f}"
    )
    print(
        f"consolidate / plain copy time: {cons_s / copy_s:.2f}; duplicates dropped: {args.rows - unique}; "
        f"output rows: {out_rows}"
    )
    print(log.strip().splitlines()[-1] if log.strip() else "")


if __name__ == "__main__":
    main()

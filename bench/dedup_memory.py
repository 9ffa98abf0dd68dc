"""Peak memory of consolidating 10,000,000 rows of which half are duplicates (a full re-embed).

The first half of the shards holds every id once; the second half holds every id again, from
later claims, so 5,000,000 rows lose. Vectors are tiny (--dimension 4) so the figure is the
de-duplication's and the rewrite's, not the vectors'. Prints the peak RSS of
``embedder consolidate --memory-limit 512M`` beside that of the same command with nothing to
merge (the fixed overhead: interpreter, pyarrow, DuckDB), each in a process of its own.

    python -m bench.dedup_memory [--rows 10000000] [--shards 100] [--memory-limit 512M] [--dir PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bench.shard_corpus import measure, write_shards


def shard_ids(rows: int, shards: int) -> Iterator[list[int]]:
    """Ids of ``shards`` files of ``rows / shards`` rows; the second half repeats the first's."""
    per_shard = rows // shards
    for index in range(shards):
        yield (np.arange(index * per_shard, (index + 1) * per_shard) % (rows // 2)).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--dimension", type=int, default=4)
    parser.add_argument("--memory-limit", default="512M")
    parser.add_argument("--dir", type=Path, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(dir=args.dir, prefix="dedup-bench-"))
    try:
        started = time.perf_counter()
        unique = args.rows // 2
        write_shards(root / "shards", shard_ids(args.rows, args.shards), args.dimension)
        input_bytes = sum(p.stat().st_size for p in (root / "shards").glob("*.parquet"))
        print(
            f"made {args.shards} shards, {args.rows:,} rows ({unique:,} distinct ids), "
            f"{input_bytes / 1e6:.0f} MB in {time.perf_counter() - started:.0f}s",
            flush=True,
        )
        os.sync()
        # The same command with nothing to merge: what any consolidate process costs.
        (root / "empty").mkdir()
        _, base_peak, _ = measure(
            [
                "embedder.cli",
                "consolidate",
                "--shards-dir",
                str(root / "empty"),
                "--consolidated-dir",
                str(root / "empty-out"),
            ]
        )
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
                "--memory-limit",
                args.memory_limit,
            ]
        )
        out_rows = sum(
            pq.ParquetFile(p).metadata.num_rows for p in (root / "out").glob("*.parquet")
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"consolidate --memory-limit {args.memory_limit}: {cons_s:.1f}s")
    print(f"peak RSS of the run:                  {cons_peak / 2**20:>7.0f} MiB")
    print(f"peak RSS with nothing to merge:       {base_peak / 2**20:>7.0f} MiB")
    print(f"output rows: {out_rows:,} (duplicates dropped: {args.rows - out_rows:,})")
    print(log.strip().splitlines()[-1] if log.strip() else "")


if __name__ == "__main__":
    main()

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
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedder.storage.schema import ShardMetadata, shard_schema
from embedder.storage.shards import PARQUET_OPTIONS

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def make_shards(directory: Path, rows: int, shards: int, dimension: int) -> int:
    """``shards`` files of ``rows / shards`` rows; the second half repeats the first's ids."""
    directory.mkdir(parents=True)
    schema = shard_schema(
        dimension, ShardMetadata(model_id="bench/model", dimension=dimension, normalize=True)
    )
    rng = np.random.default_rng(0)
    unique = rows // 2
    per_shard = rows // shards
    for index in range(shards):
        first = (index * per_shard) % unique
        ids = np.arange(first, first + per_shard) % unique
        vectors = rng.standard_normal((per_shard, dimension), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        columns = {
            "_id": pa.array(ids.astype(str)),
            "_id_kind": pa.array(["int"] * per_shard)
            .dictionary_encode()
            .cast(schema.field("_id_kind").type),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.reshape(-1)), dimension
            ),
            "model": pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(per_shard, np.int8)), pa.array(["bench/model"])
            ),
            "model_sha": pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(per_shard, np.int8)), pa.array([""])
            ),
            "text_hash": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(16), per_shard, [None, pa.py_buffer(rng.bytes(16 * per_shard))]
            ),
            "embedded_at": pa.array(
                np.full(per_shard, int(T0.timestamp() * 1000) + index, np.int64),
                pa.timestamp("ms", tz="UTC"),
            ),
            "claim_seq": pa.array(np.full(per_shard, index + 1, np.int64)),
        }
        table = pa.table([columns[name] for name in schema.names], schema=schema)
        pq.write_table(table, directory / f"shard-{index:05d}.parquet", **PARQUET_OPTIONS)
    return unique


def measure(args: list[str]) -> tuple[float, int, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bench.peak_rss", *args], check=False, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{args} failed: {done.stderr[-2000:]}")
    peak = int(done.stdout.strip().splitlines()[-1].split()[-1])
    return elapsed, peak, done.stderr


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
        unique = make_shards(root / "shards", args.rows, args.shards, args.dimension)
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

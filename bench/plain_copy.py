"""The baseline for the consolidation benchmark: a plain pyarrow read-and-write.

Streams every shard of a directory into output files of about the same target size, with
the same Parquet options as the consolidator, and nothing else: no de-duplication, no
checks, no manifest. ``python -m bench.plain_copy SHARDS OUT [--target-file-size BYTES]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from embedder.storage.shards import PARQUET_OPTIONS


class Output:
    def __init__(
        self, out: Path, schema: pa.Schema, rows_per_file: int, rows_per_group: int
    ) -> None:
        self._out, self._schema = out, schema
        self._rows_per_file, self._rows_per_group = rows_per_file, rows_per_group
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = self._file_rows = self._files = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(
                self._out / f"part-{self._files:05d}.parquet", self._schema, **PARQUET_OPTIONS
            )
            self._files += 1
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        if self._pending_rows >= self._rows_per_group:
            self._flush()
        if self._file_rows >= self._rows_per_file:
            self.close()

    def close(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
        self._writer, self._file_rows = None, 0

    def _flush(self) -> None:
        if self._pending and self._writer is not None:
            self._writer.write_table(pa.Table.from_batches(self._pending, self._schema))
            self._file_rows += self._pending_rows
            self._pending, self._pending_rows = [], 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("shards", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--target-file-size", type=int, default=1 << 30)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in args.shards.glob("*.parquet") if not p.name.startswith("."))
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in files)
    row_bytes = sum(p.stat().st_size for p in files) / rows
    output = Output(
        args.out,
        pq.read_schema(files[0]),
        int(args.target_file_size / row_bytes),
        int((128 << 20) / row_bytes),
    )
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=8192):
            output.write(batch)
    output.close()


if __name__ == "__main__":
    main()

"""The baseline for the consolidation benchmark: a plain pyarrow read-and-write.

Streams every shard of a directory into output files of about the same target size, with
the Parquet options the shards were written with (read off the first shard: the worker and
the consolidator share them), and nothing else: no de-duplication, no
checks, no manifest. ``python -m bench.plain_copy SHARDS OUT [--target-file-size BYTES]``
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def write_options(path: Path) -> dict[str, Any]:
    """The compression and the dictionary and byte-stream-split columns of a Parquet file."""
    group = pq.ParquetFile(path).metadata.row_group(0)
    columns = [group.column(i) for i in range(group.num_columns)]
    return {
        "compression": columns[0].compression.lower(),
        "use_dictionary": [c.path_in_schema for c in columns if "RLE_DICTIONARY" in c.encodings],
        "use_byte_stream_split": [
            c.path_in_schema for c in columns if "BYTE_STREAM_SPLIT" in c.encodings
        ],
    }


class Output:
    def __init__(
        self,
        out: Path,
        schema: pa.Schema,
        options: dict[str, Any],
        rows_per_file: int,
        rows_per_group: int,
    ) -> None:
        self._out, self._schema, self._options = out, schema, options
        self._rows_per_file, self._rows_per_group = rows_per_file, rows_per_group
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = self._file_rows = self._files = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(
                self._out / f"part-{self._files:05d}.parquet", self._schema, **self._options
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
        write_options(files[0]),
        int(args.target_file_size / row_bytes),
        int((128 << 20) / row_bytes),
    )
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=8192):
            output.write(batch)
    output.close()


if __name__ == "__main__":
    main()

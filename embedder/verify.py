"""``embedder verify``: the consolidated output against MongoDB, the seed's success criteria.

Every doc marked done is present exactly once; one dimension throughout; no NaN or
infinity; norms near 1 when the vectors are normalized. Both id sets go through DuckDB
(an on-disk work database under a memory limit), so a collection of any size verifies in
bounded memory.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pymongo import AsyncMongoClient

from embedder import manifest as mf
from embedder import storage
from embedder.ids import encode_id
from embedder.queue_spec import QueueSpec
from embedder.workdb import open_work_db

_IDS = pa.schema([("_id", pa.string()), ("_id_kind", pa.string())])
_SAMPLE = 10


@dataclass
class VerifyReport:
    files: int = 0
    rows: int = 0
    dimension: int | None = None
    model_id: str | None = None
    dimensions_seen: list[int] = field(default_factory=list)
    duplicate_rows: int = 0
    nonfinite_rows: int = 0
    off_norm_rows: int = 0
    done_in_mongo: int = 0
    missing: int = 0
    missing_sample: list[str] = field(default_factory=list)
    not_marked_done: int = 0
    shards_not_consolidated: int = 0

    @property
    def ok(self) -> bool:
        return (
            self.missing == 0
            and self.duplicate_rows == 0
            and self.nonfinite_rows == 0
            and self.off_norm_rows == 0
            and len(self.dimensions_seen) <= 1
        )

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ok": self.ok}

    def lines(self) -> list[str]:
        verdict = "OK" if self.ok else "FAILED"
        lines = [
            f"verify: {verdict}",
            f"  output: {self.rows} rows in {self.files} files, model {self.model_id}, dimension {self.dimension}",
            f"  MongoDB: {self.done_in_mongo} docs marked done",
            f"  missing from the output: {self.missing}"
            + (f" (e.g. {', '.join(self.missing_sample)})" if self.missing else ""),
            f"  duplicate rows: {self.duplicate_rows}; NaN/inf rows: {self.nonfinite_rows}; "
            f"rows with norm off 1: {self.off_norm_rows}",
        ]
        if len(self.dimensions_seen) > 1:
            lines.append(f"  several dimensions: {self.dimensions_seen}")
        if self.not_marked_done:
            lines.append(
                f"  rows whose doc is not marked done: {self.not_marked_done} "
                "(re-queued docs, or a worker stopped between its shard and its mark)"
            )
        if self.shards_not_consolidated:
            lines.append(
                f"  shards not consolidated yet: {self.shards_not_consolidated} (run consolidate first)"
            )
        return lines


async def verify(
    client: AsyncMongoClient[dict[str, Any]],
    spec: QueueSpec,
    output_uri: str,
    *,
    shards_uri: str | None = None,
    memory_limit: int = 512 << 20,
    norm_tolerance: float = 1e-3,
) -> VerifyReport:
    report = VerifyReport()
    fs, root = storage.open_root(output_uri, create=False)
    manifest = mf.load(fs, root)
    report.files, report.model_id = len(manifest.files), manifest.model_id
    if shards_uri:
        shard_fs, shard_root = storage.open_root(shards_uri, create=False)
        report.shards_not_consolidated = len(storage.list_parquet(shard_fs, shard_root))
    with tempfile.TemporaryDirectory(prefix="verify-") as tmp:
        con = open_work_db(Path(tmp), memory_limit)
        try:
            con.execute("CREATE TABLE output (_id VARCHAR, _id_kind VARCHAR)")
            con.execute("CREATE TABLE done (_id VARCHAR, _id_kind VARCHAR)")
            normalized = manifest.normalized is not False
            for name in (f.name for f in manifest.files):
                _scan_output(
                    fs,
                    f"{root}/{name}",
                    con,
                    report,
                    normalized=normalized,
                    tolerance=norm_tolerance,
                )
            async for batch in _done_ids(client, spec):
                _append(con, "done", batch)
            report.done_in_mongo = _scalar(con, "SELECT count(*) FROM done")
            report.duplicate_rows = report.rows - _scalar(
                con, "SELECT count(*) FROM (SELECT DISTINCT * FROM output)"
            )
            report.missing = _scalar(
                con, "SELECT count(*) FROM done ANTI JOIN output USING (_id, _id_kind)"
            )
            sample = con.execute(
                f"SELECT _id FROM done ANTI JOIN output USING (_id, _id_kind) ORDER BY _id LIMIT {_SAMPLE}"
            ).fetchall()
            report.missing_sample = [str(row[0]) for row in sample]
            report.not_marked_done = _scalar(
                con,
                "SELECT count(*) FROM (SELECT DISTINCT * FROM output) ANTI JOIN done USING (_id, _id_kind)",
            )
        finally:
            con.close()
    report.dimensions_seen = sorted(set(report.dimensions_seen))
    report.dimension = (
        report.dimensions_seen[0] if len(report.dimensions_seen) == 1 else manifest.dimension
    )
    return report


def _scan_output(
    fs: Any,
    path: str,
    con: duckdb.DuckDBPyConnection,
    report: VerifyReport,
    *,
    normalized: bool,
    tolerance: float,
) -> None:
    with fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        dimension = parquet.schema_arrow.field("embedding").type.list_size
        if dimension not in report.dimensions_seen:
            report.dimensions_seen.append(dimension)
        for batch in parquet.iter_batches(
            batch_size=16_384, columns=["_id", "_id_kind", "embedding"]
        ):
            vectors = np.asarray(batch.column("embedding").flatten()).reshape(-1, dimension)
            finite = np.isfinite(vectors).all(axis=1)
            report.nonfinite_rows += int((~finite).sum())
            if normalized:
                norms = np.linalg.norm(np.where(finite[:, None], vectors, 0), axis=1)
                report.off_norm_rows += int((finite & (np.abs(norms - 1.0) > tolerance)).sum())
            report.rows += batch.num_rows
            ids = pa.record_batch(
                [batch.column("_id"), batch.column("_id_kind").cast(pa.string())], schema=_IDS
            )
            _append(con, "output", ids)


async def _done_ids(
    client: AsyncMongoClient[dict[str, Any]], spec: QueueSpec
) -> AsyncIterator[pa.RecordBatch]:
    docs = client[spec.database][spec.collection]
    cursor = docs.find({spec.status_path: "done"}, {"_id": 1}, batch_size=10_000).hint(
        spec.done_index_name
    )
    texts: list[str] = []
    kinds: list[str] = []
    async for doc in cursor:
        text, kind = encode_id(doc["_id"])
        texts.append(text)
        kinds.append(kind)
        if len(texts) >= 50_000:
            yield pa.record_batch([pa.array(texts), pa.array(kinds)], schema=_IDS)
            texts, kinds = [], []
    if texts:
        yield pa.record_batch([pa.array(texts), pa.array(kinds)], schema=_IDS)


def _append(con: duckdb.DuckDBPyConnection, table: str, batch: pa.RecordBatch) -> None:
    con.register("incoming", pa.Table.from_batches([batch]))
    con.execute(f"INSERT INTO {table} SELECT * FROM incoming")
    con.unregister("incoming")


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = con.execute(sql).fetchone()
    return int(row[0]) if row else 0

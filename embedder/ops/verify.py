"""``embedder verify``: the consolidated output against MongoDB, the seed's success criteria.

OK means: every doc marked done is in the output exactly once, with the row its mark names
(its model, revision and embed key, and the hash of its text where the mark keeps one); no
row is unexplained (a row whose doc is not marked done, or is marked done by another model);
one dimension throughout; no NaN or infinity; norms near 1 when the vectors are normalized.
Pending and failed docs are counted, not failed on. An output that is missing, or belongs to
another queue or model, cannot be checked: that is its own verdict, not a failure of the data.

The marks and the output's keys both go through DuckDB (an on-disk work database under a
memory limit) and are compared by joins, so a collection of any size verifies in bounded
memory.
"""

from __future__ import annotations

import dataclasses
import enum
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from embedder.errors import EmbedderError, QueueError, StorageError
from embedder.ids import encode_id
from embedder.queue.marks import DoneMark, done_query, failed_query
from embedder.queue.spec import QueueSpec
from embedder.storage import filesystems as storage
from embedder.storage import manifest as mf
from embedder.storage.schema import ShardMetadata, read_footer
from embedder.storage.workdb import open_work_db
from embedder.vectors import vector_faults

# One row per output row and per done mark: what identifies the vector a doc should have.
# model_sha and embed_key are '' where unknown, so equality needs no NULL cases.
_KEYS = pa.schema(
    [
        ("_id", pa.string()),
        ("_id_kind", pa.string()),
        ("model", pa.string()),
        ("model_sha", pa.string()),
        ("embed_key", pa.string()),
        ("text_hash", pa.binary()),
    ]
)
_COLUMNS = ", ".join(f"{f.name} {'BLOB' if f.name == 'text_hash' else 'VARCHAR'}" for f in _KEYS)
# A row is the one a mark names when model and revision agree, and the embed key too where
# both record one (marks and outputs made before embed keys were recorded have none).
_SAME_MODEL = (
    "o.model = d.model AND o.model_sha = d.model_sha "
    "AND (o.embed_key = '' OR d.embed_key = '' OR o.embed_key = d.embed_key)"
)
_SAMPLE = 10
_MARK_BATCH = 50_000


class Verdict(enum.Enum):
    """What verify concluded; the value is the exit code (2 is click's, for usage errors)."""

    OK = 0
    FAILED = 1
    COULD_NOT_CHECK = 3
    NOTHING_TO_VERIFY = 4

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")


class CannotVerifyError(EmbedderError):
    """The output cannot be compared with this queue: missing, or another queue's or model's."""


@dataclass
class Finding:
    """Rows (or docs) of one kind of discrepancy: how many, and a few of their ids."""

    count: int = 0
    sample: list[str] = field(default_factory=list)

    def text(self) -> str:
        return f"{self.count}" + (f" (e.g. {', '.join(self.sample)})" if self.count else "")


@dataclass
class VerifyReport:
    queue: str = ""
    files: int = 0
    rows: int = 0
    dimension: int | None = None
    model_id: str | None = None
    dimensions_seen: list[int] = field(default_factory=list)
    duplicate_rows: int = 0
    nonfinite_rows: int = 0
    off_norm_rows: int = 0
    done_in_mongo: int = 0
    pending: int = 0
    failed: int = 0
    missing: Finding = field(default_factory=Finding)
    not_marked_done: Finding = field(default_factory=Finding)
    other_model: Finding = field(default_factory=Finding)
    other_text: Finding = field(default_factory=Finding)
    shards_not_consolidated: int = 0
    could_not_check: str | None = None
    output_uri: str | None = None  # the consolidated output checked

    @classmethod
    def cannot(cls, reason: str) -> VerifyReport:
        return cls(could_not_check=reason)

    @property
    def verdict(self) -> Verdict:
        if self.could_not_check is not None:
            return Verdict.COULD_NOT_CHECK
        if self.done_in_mongo == 0 and self.rows == 0:
            return Verdict.NOTHING_TO_VERIFY
        clean = (
            self.missing.count == 0
            and self.duplicate_rows == 0
            and self.nonfinite_rows == 0
            and self.off_norm_rows == 0
            and len(self.dimensions_seen) <= 1
            and self.not_marked_done.count == 0
            and self.other_model.count == 0
            and self.other_text.count == 0
        )
        return Verdict.OK if clean else Verdict.FAILED

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK

    def as_dict(self) -> dict[str, Any]:
        plain = dataclasses.asdict(self)
        for name in ("missing", "not_marked_done", "other_model", "other_text"):
            finding = getattr(self, name)
            plain[name], plain[f"{name}_sample"] = finding.count, finding.sample
        return {
            **plain,
            "ok": self.ok,
            "verdict": self.verdict.name.lower(),
            "exit_code": self.verdict.value,
        }

    def lines(self) -> list[str]:
        verdict = self.verdict
        if verdict is Verdict.COULD_NOT_CHECK:
            return [f"verify: {verdict.label}: {self.could_not_check}"]
        mongo = (
            f"  MongoDB: {self.done_in_mongo} docs marked done; "
            f"pending {self.pending}, failed {self.failed}"
        )
        if verdict is Verdict.NOTHING_TO_VERIFY:
            lines = [
                f"verify: {verdict.label}: no doc is marked done and the output holds no rows",
                mongo,
            ]
            return lines + self._shard_lines()
        lines = [
            f"verify: {verdict.label}",
            f"  output: {self.rows} rows in {self.files} files, model {self.model_id}, "
            f"dimension {self.dimension}, queue {self.queue}, at {self.output_uri}",
            mongo,
            f"  missing from the output: {self.missing.text()}",
            f"  duplicate rows: {self.duplicate_rows}; NaN/inf rows: {self.nonfinite_rows}; "
            f"rows with norm off 1: {self.off_norm_rows}",
        ]
        if len(self.dimensions_seen) > 1:
            lines.append(f"  several dimensions: {self.dimensions_seen}")
        if self.not_marked_done.count:
            lines.append(
                f"  rows whose doc is not marked done: {self.not_marked_done.text()} "
                "(re-queued docs, or a worker stopped between its shard and its mark)"
            )
        if self.other_model.count:
            lines.append(
                f"  rows of another model than their mark names: {self.other_model.text()}"
            )
        if self.other_text.count:
            lines.append(
                f"  rows made from another text than their mark names: {self.other_text.text()}"
            )
        return lines + self._shard_lines()

    def _shard_lines(self) -> list[str]:
        if not self.shards_not_consolidated:
            return []
        return [
            f"  shards not consolidated yet: {self.shards_not_consolidated} (run consolidate first)"
        ]


async def verify(
    client: AsyncMongoClient[dict[str, Any]],
    spec: QueueSpec,
    output_uri: str,
    *,
    shards_uri: str | None = None,
    memory_limit: int = 512 << 20,
    norm_tolerance: float = 1e-3,
) -> VerifyReport:
    """Raises ``EmbedderError`` (``CannotVerifyError`` among them) when nothing could be checked."""
    report = VerifyReport(queue=spec.key, output_uri=output_uri)
    # The cheap checks first: whose output this is, before a pass over every mark.
    if shards_uri:
        report.shards_not_consolidated = _check_shards(shards_uri, spec)
    fs, root = storage.open_root(output_uri, create=False)
    has_output = storage.exists(fs, f"{root}/{mf.MANIFEST_NAME}")
    manifest = _load_manifest(fs, root)
    _check_queue(manifest.queue, spec, f"the output at {output_uri}")
    paths = [f"{root}/{f.name}" for f in manifest.files]
    for path in paths:
        _check_queue(_file_queue(_read_schema(fs, path)), spec, f"output file {path}")
    report.files, report.model_id = len(manifest.files), manifest.model_id
    await _count_queue(client, spec, report)
    if not has_output:
        if report.done_in_mongo == 0:
            return report  # nothing to verify
        raise CannotVerifyError(_no_output(output_uri, report.shards_not_consolidated))
    with tempfile.TemporaryDirectory(prefix="verify-") as tmp:
        con = open_work_db(Path(tmp), memory_limit)
        try:
            con.execute(f"CREATE TABLE output ({_COLUMNS})")
            con.execute(f"CREATE TABLE done ({_COLUMNS})")
            async for batch in _done_marks(client, spec):
                _append(con, "done", batch)
            # The marks as read, not the count taken before: docs may be marked meanwhile.
            report.done_in_mongo = _scalar(con, "SELECT count(*) FROM done")
            normalized = manifest.normalized is not False
            for path in paths:
                _scan_output(fs, path, con, report, normalized=normalized, tolerance=norm_tolerance)
            _check_model(con, output_uri, report)
            _compare(con, report)
        except duckdb.Error as exc:
            raise StorageError(f"the work database in {tmp} failed: {exc}") from exc
        finally:
            con.close()
    report.dimensions_seen = sorted(set(report.dimensions_seen))
    report.dimension = (
        report.dimensions_seen[0] if len(report.dimensions_seen) == 1 else manifest.dimension
    )
    return report


def _check_queue(recorded: str | None, spec: QueueSpec, where: str) -> None:
    """Outputs made before the queue was recorded say nothing, and are taken as this queue's."""
    if recorded and recorded != spec.key:
        raise CannotVerifyError(
            f"{where}: rows of queue {recorded}, not of {spec.key} (the queue verified); "
            "give this queue's directories"
        )


def _load_manifest(fs: pafs.FileSystem, root: str) -> mf.Manifest:
    try:
        return mf.load(fs, root)
    except (ValueError, TypeError) as exc:  # not JSON, or not a manifest's fields
        raise StorageError(f"{root}/{mf.MANIFEST_NAME} is unreadable: {exc}") from exc


def _file_queue(schema: pa.Schema) -> str | None:
    return ShardMetadata.from_schema(schema).queue or None


def _check_shards(shards_uri: str, spec: QueueSpec) -> int:
    """How many shards wait for consolidation; each must be this queue's."""
    fs, root = storage.open_root(shards_uri, create=False)
    shards = storage.list_parquet(fs, root)
    for info in shards:
        try:
            schema = _read_schema(fs, info.path)
        except StorageError:
            continue  # a damaged shard is the consolidator's to report
        _check_queue(_file_queue(schema), spec, f"the shards at {shards_uri}")
    return len(shards)


def _read_schema(fs: pafs.FileSystem, path: str) -> pa.Schema:
    try:
        return read_footer(fs, path).schema
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot read {path}: {exc}") from exc


def _no_output(output_uri: str, shards: int) -> str:
    hint = f"; {shards} shards are not consolidated yet: run consolidate first" if shards else ""
    return f"no output at {output_uri} (no {mf.MANIFEST_NAME}){hint}"


async def _count_queue(
    client: AsyncMongoClient[dict[str, Any]], spec: QueueSpec, report: VerifyReport
) -> None:
    """Done, pending and failed docs, each counted on an index of the queue (as ``status``)."""
    docs = client[spec.database][spec.collection]
    try:
        report.done_in_mongo = await docs.count_documents(
            done_query(spec.target_field), hint=spec.done_index_name
        )
        report.pending = await docs.count_documents(spec.pending_query(), hint=spec.index_name)
        report.failed = await docs.count_documents(
            failed_query(spec.target_field), hint=spec.done_index_name
        )
    except PyMongoError as exc:
        raise QueueError(f"counting the queue's docs failed: {exc}") from exc


async def _done_marks(
    client: AsyncMongoClient[dict[str, Any]], spec: QueueSpec
) -> AsyncIterator[pa.RecordBatch]:
    """Every done doc's mark, streamed in batches: id, model, revision, embed key, text hash."""
    docs = client[spec.database][spec.collection]
    target = spec.target_field
    projection = {
        f"{target}.{name}": 1 for name in ("model", "model_sha", "embed_key", "text_hash")
    }
    cursor = docs.find(done_query(target), projection, batch_size=10_000).hint(spec.done_index_name)
    rows: list[tuple[str, str, str, str, str, bytes | None]] = []
    try:
        async for doc in cursor:
            # Selected by its done status, so a done mark (however partial its fields).
            mark = DoneMark.from_bson(doc.get(target) or {})
            text, kind = encode_id(doc["_id"])
            rows.append(
                (text, kind, mark.model, mark.model_sha or "", mark.embed_key, mark.text_hash)
            )
            if len(rows) >= _MARK_BATCH:
                yield _key_batch(rows)
                rows = []
    except PyMongoError as exc:
        raise QueueError(f"reading the done marks failed: {exc}") from exc
    if rows:
        yield _key_batch(rows)


def _key_batch(rows: list[tuple[str, str, str, str, str, bytes | None]]) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True))
    return pa.record_batch(
        [pa.array(column, type=f.type) for column, f in zip(columns, _KEYS, strict=True)],
        schema=_KEYS,
    )


def _scan_output(
    fs: pafs.FileSystem,
    path: str,
    con: duckdb.DuckDBPyConnection,
    report: VerifyReport,
    *,
    normalized: bool,
    tolerance: float,
) -> None:
    try:
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            schema = parquet.schema_arrow
            embed_key = ShardMetadata.from_schema(schema).embed_key
            dimension = schema.field("embedding").type.list_size
            if dimension not in report.dimensions_seen:
                report.dimensions_seen.append(dimension)
            for batch in _batches(parquet):
                _count_bad_vectors(
                    batch, dimension, report, normalized=normalized, tolerance=tolerance
                )
                report.rows += batch.num_rows
                _append(con, "output", _row_keys(batch, embed_key))
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot read output file {path}: {exc}") from exc


def _batches(parquet: pq.ParquetFile) -> Iterator[pa.RecordBatch]:
    wanted = ["_id", "_id_kind", "embedding", "model", "model_sha", "text_hash"]
    present = [name for name in wanted if name in parquet.schema_arrow.names]
    yield from parquet.iter_batches(batch_size=16_384, columns=present)


def _count_bad_vectors(
    batch: pa.RecordBatch,
    dimension: int,
    report: VerifyReport,
    *,
    normalized: bool,
    tolerance: float,
) -> None:
    vectors = np.asarray(batch.column("embedding").flatten()).reshape(-1, dimension)
    faults = vector_faults(vectors, normalized=normalized, tolerance=tolerance)
    report.nonfinite_rows += faults.nonfinite_rows
    report.off_norm_rows += faults.off_norm_rows


def _row_keys(batch: pa.RecordBatch, embed_key: str) -> pa.RecordBatch:
    """The key columns of output rows; a column an old output lacks compares as unknown."""
    n = batch.num_rows

    def column(name: str, kind: pa.DataType, missing: object) -> pa.Array:
        if name in batch.schema.names:
            return batch.column(name).cast(kind)
        return pa.array([missing] * n, type=kind)

    return pa.record_batch(
        [
            column("_id", pa.string(), None),
            column("_id_kind", pa.string(), None),
            column("model", pa.string(), ""),
            column("model_sha", pa.string(), ""),
            pa.array([embed_key] * n, type=pa.string()),
            column("text_hash", pa.binary(), None),
        ],
        schema=_KEYS,
    )


def _check_model(con: duckdb.DuckDBPyConnection, output_uri: str, report: VerifyReport) -> None:
    """An output none of whose rows any done mark names is another model's output."""
    if report.done_in_mongo == 0 or report.rows == 0:
        return
    shared = _scalar(
        con,
        "SELECT count(*) FROM (SELECT DISTINCT model, model_sha, embed_key FROM output) o "
        f"SEMI JOIN (SELECT DISTINCT model, model_sha, embed_key FROM done) d ON {_SAME_MODEL}",
    )
    if shared:
        return
    ours, theirs = (
        ", ".join(
            f"{model}@{sha or '?'} (embed key {key or '?'})"
            for model, sha, key in con.execute(
                f"SELECT DISTINCT model, model_sha, embed_key FROM {table} ORDER BY ALL "
                f"LIMIT {_SAMPLE}"
            ).fetchall()
        )
        for table in ("output", "done")
    )
    raise CannotVerifyError(
        f"the output at {output_uri} holds {ours}; the docs marked done name {theirs}"
    )


def _compare(con: duckdb.DuckDBPyConnection, report: VerifyReport) -> None:
    report.duplicate_rows = report.rows - _scalar(
        con, "SELECT count(*) FROM (SELECT DISTINCT _id, _id_kind FROM output)"
    )
    report.missing = _finding(
        con, "SELECT d._id FROM done d ANTI JOIN output o USING (_id, _id_kind)"
    )
    report.not_marked_done = _finding(
        con,
        "SELECT DISTINCT o._id, o._id_kind FROM output o ANTI JOIN done d USING (_id, _id_kind)",
    )
    report.other_model = _finding(
        con,
        "SELECT DISTINCT o._id, o._id_kind FROM output o JOIN done d USING (_id, _id_kind) "
        f"WHERE NOT ({_SAME_MODEL})",
    )
    report.other_text = _finding(
        con,
        "SELECT DISTINCT o._id, o._id_kind FROM output o JOIN done d USING (_id, _id_kind) "
        "WHERE d.text_hash IS NOT NULL AND o.text_hash IS DISTINCT FROM d.text_hash",
    )


def _finding(con: duckdb.DuckDBPyConnection, ids_sql: str) -> Finding:
    """How many rows ``ids_sql`` gives (its first column the encoded ``_id``), and a sample."""
    count = _scalar(con, f"SELECT count(*) FROM ({ids_sql})")
    sample = con.execute(f"SELECT _id FROM ({ids_sql}) ORDER BY _id LIMIT {_SAMPLE}").fetchall()
    return Finding(count, [str(row[0]) for row in sample])


def _append(con: duckdb.DuckDBPyConnection, table: str, batch: pa.RecordBatch) -> None:
    con.register("incoming", pa.Table.from_batches([batch]))
    con.execute(f"INSERT INTO {table} SELECT * FROM incoming")
    con.unregister("incoming")


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    # fetchall, not fetchone: DuckDB keeps a result open until it is read to its end, and an
    # open result blocks registering the next batch.
    rows = con.execute(sql).fetchall()
    return int(rows[0][0]) if rows else 0

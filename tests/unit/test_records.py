"""The records that cross modules, each read back as it was written (no servers)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import orjson
import pyarrow as pa

from embedder.queue.heartbeat import Heartbeat, WorkerProgress
from embedder.queue.marks import DoneMark, FailedMark, read_mark
from embedder.storage import manifest as mf
from embedder.storage.consolidate import CommitRecord
from embedder.storage.schema import ShardMetadata, shard_schema
from embedder.vectors import vector_faults

AT = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def test_marks_read_back_as_written() -> None:
    done = DoneMark("m", "sha", "shard-1.parquet", "key", text_hash=b"\x01" * 16)
    assert read_mark(done.to_bson(AT)) == DoneMark(
        "m", "sha", "shard-1.parquet", "key", text_hash=b"\x01" * 16, at=AT
    )
    assert "text_hash" not in DoneMark("m", None, "s").to_bson(AT)
    failed = FailedMark("x" * 600).to_bson(AT)
    assert failed["reason"] == "x" * 500
    assert read_mark(failed) == FailedMark("x" * 500, AT)
    for not_a_mark in (None, True, {"status": "other"}, "done"):
        assert read_mark(not_a_mark) is None


def test_heartbeat_reads_back_and_naive_times_are_utc() -> None:
    progress = WorkerProgress(embedded=5, rate_docs_per_s=1.5, last_shard="s", paused=True)
    beat = Heartbeat("host", 42, AT, AT + dt.timedelta(seconds=60), progress)
    assert Heartbeat.from_bson(beat.to_bson()) == beat
    naive = {**beat.to_bson(), "expires_at": (AT + dt.timedelta(seconds=60)).replace(tzinfo=None)}
    read = Heartbeat.from_bson(naive)
    assert read.alive(AT) and not read.alive(AT + dt.timedelta(seconds=61))
    # A worker that registered but has not reported progress yet.
    assert Heartbeat.from_bson(Heartbeat("h", 1, AT, AT).to_bson()).progress == WorkerProgress()


def test_shard_metadata_reads_back_and_defaults_for_old_files() -> None:
    metadata = ShardMetadata("m", "sha", "key", 8, False, "server", "db.c:t:1", "t", "0.1.0")
    assert ShardMetadata.from_schema(shard_schema(8, metadata)) == metadata
    assert ShardMetadata.from_schema(pa.schema([pa.field("_id", pa.string())])) == ShardMetadata()


def test_commit_record_reads_back_and_old_records_name_no_base() -> None:
    manifest = mf.Manifest(model_id="m", dimension=8, normalized=True, queue="q")
    record = CommitRecord(
        "r1", "/staging", ["a.parquet"], [], ["s.parquet"], "delete", manifest, "r0"
    )
    assert CommitRecord.from_bytes(record.to_bytes()) == record
    old = orjson.loads(record.to_bytes())
    del old["base"], old["base_known"]
    assert CommitRecord.from_bytes(orjson.dumps(old)).base_known is False


def test_vector_faults_count_nonfinite_and_off_norm_rows() -> None:
    vectors = np.array([[1, 0], [np.nan, 0], [0.5, 0], [0, 1.0001]], dtype=np.float32)
    faults = vector_faults(vectors, normalized=True, tolerance=1e-3)
    assert (faults.nonfinite_rows, faults.off_norm_rows) == (1, 1)
    assert abs(faults.worst_norm_error - 0.5) < 1e-6
    assert vector_faults(vectors, normalized=False).off_norm_rows == 0

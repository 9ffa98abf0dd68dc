"""A shard's columns, built from their buffers, read back as written; no pandas imported."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from bson import ObjectId

from embedder.errors import StorageError
from embedder.ids import decode_id
from embedder.storage.schema import ShardMetadata
from embedder.storage.shards import ShardSettings, ShardWriter


def writer(tmp_path: Path, dimension: int = 3) -> ShardWriter:
    return ShardWriter(
        ShardSettings(cold_uri=str(tmp_path / "cold"), hot_dir=tmp_path / "hot"),
        owner="w",
        dimension=dimension,
        metadata=ShardMetadata(model_id="m", model_sha="rev"),
    )


def test_every_column_reads_back_as_written(tmp_path: Path) -> None:
    shards = writer(tmp_path)
    ids = [7, "naïve ✓", ObjectId(), {"nested": [1, 2]}, ""]
    vectors = np.arange(15, dtype=np.float32).reshape(5, 3) / 7
    hashes = [bytes([n]) * 16 for n in range(5)]
    at = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    shards.append(ids[:3], vectors[:3], at, hashes[:3], [10, 11, 12])
    shards.append(ids[3:], vectors[3:], at, hashes[3:])  # no claim sequence numbers
    receipt = shards.roll()
    assert receipt is not None
    table = pq.read_table(tmp_path / "cold" / receipt.name)
    rows = table.to_pylist()
    assert [decode_id(r["_id"], r["_id_kind"]) for r in rows] == ids
    np.testing.assert_array_equal(np.array([r["embedding"] for r in rows], np.float32), vectors)
    assert [r["text_hash"] for r in rows] == hashes
    assert {r["model"] for r in rows} == {"m"} and {r["model_sha"] for r in rows} == {"rev"}
    assert {r["embedded_at"] for r in rows} == {at}
    assert [r["claim_seq"] for r in rows] == [10, 11, 12, None, None]


def test_a_text_hash_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="16 bytes"):
        writer(tmp_path).append(
            [1, 2], np.zeros((2, 3), np.float32), dt.datetime.now(dt.UTC), [b"x" * 16, b"short"]
        )


WRITE_A_SHARD = """
import datetime as dt, sys
from pathlib import Path
import numpy as np
from embedder.storage.schema import ShardMetadata
from embedder.storage.shards import ShardSettings, ShardWriter
root = Path(sys.argv[1])
shards = ShardWriter(ShardSettings(cold_uri=str(root / "cold"), hot_dir=root / "hot"),
                     owner="w", dimension=2, metadata=ShardMetadata(model_id="m"))
shards.append([1, "a"], np.ones((2, 2), np.float32), dt.datetime.now(dt.UTC), [b"h" * 16] * 2, [1, 2])
assert shards.roll() is not None
print("pandas" in sys.modules)
"""


def test_writing_a_shard_does_not_import_pandas(tmp_path: Path) -> None:
    # pandas costs a worker a second or more of its start, and the worker never uses it.
    done = subprocess.run(
        [sys.executable, "-c", WRITE_A_SHARD, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "False"

"""De-duplication by _id across files, property-tested: one row per id, and the winner is the
row of the latest claim (MongoDB's claim_seq), whatever the hosts' clocks said."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from embedder.storage.dedup import LoserStream, find_losers

row = st.tuples(  # (id, kind, claim_seq or None, time); ids collide on purpose
    st.integers(0, 30),
    st.sampled_from(["int", "string"]),
    st.one_of(st.none(), st.integers(0, 4)),
    st.integers(0, 5),
)
files_of_rows = st.lists(
    st.tuples(st.booleans(), st.lists(row, max_size=25)),  # (file has claim_seq, rows)
    min_size=1,
    max_size=5,
)


def _rank(seq: int | None, at: int, index: int, position: int) -> tuple[int, int, int, int]:
    # Rows without a claim_seq (older shards) rank below every row with one.
    return (-1 if seq is None else seq, at, index, position)


@settings(max_examples=40, deadline=None)
@given(files_of_rows)
def test_exactly_the_row_of_the_latest_claim_survives(
    files: list[tuple[bool, list[tuple[int, str, int | None, int]]]],
) -> None:
    files = [
        (has_seq, [(i, k, s if has_seq else None, t) for i, k, s, t in rows])
        for has_seq, rows in files
    ]
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for index, (has_seq, rows) in enumerate(files):
            path = Path(tmp) / f"f{index}.parquet"
            columns = {
                "_id": pa.array([str(r[0]) for r in rows], pa.string()),
                "_id_kind": pa.array([r[1] for r in rows], pa.string()),
                "embedded_at": pa.array([r[3] for r in rows], pa.int64()),
            }
            if has_seq:  # files of older versions have no claim_seq column at all
                columns["claim_seq"] = pa.array([r[2] for r in rows], pa.int64())
            pq.write_table(pa.table(columns), path)
            paths.append((pafs.LocalFileSystem(), str(path)))
        with find_losers(paths, memory_limit=64 << 20, work_dir=Path(tmp)) as losers:
            assert not losers.unreadable
            stream = losers.stream(batch_rows=7)  # small batches: the stream spans many
            dropped = {
                index: set(stream.take(index, len(rows)).tolist())
                for index, (_, rows) in enumerate(files)
            }
            assert losers.count == sum(len(d) for d in dropped.values())

    survivors: dict[tuple[str, str], tuple[int, int, int, int]] = {}
    for index, (_, rows) in enumerate(files):
        for position, (doc_id, kind, seq, at) in enumerate(rows):
            if position in dropped[index]:
                continue
            key = (str(doc_id), kind)
            assert key not in survivors, f"{key} survived twice"
            survivors[key] = _rank(seq, at, index, position)
    every = {(str(r[0]), r[1]) for _, rows in files for r in rows}
    assert set(survivors) == every, "an id lost all its rows"
    for key, rank in survivors.items():
        best = max(
            _rank(r[2], r[3], i, j)
            for i, (_, rows) in enumerate(files)
            for j, r in enumerate(rows)
            if (str(r[0]), r[1]) == key
        )
        assert rank == best


def test_losers_are_handed_out_in_slices_of_the_stream() -> None:
    """The consumer asks row ranges file by file; each answer holds only that range."""
    batches = iter(
        [
            pa.record_batch(
                [pa.array([0, 0, 2], pa.int32()), pa.array([1, 9, 0], pa.int64())],
                names=["file", "row"],
            ),
            pa.record_batch(
                [pa.array([2, 2, 3], pa.int32()), pa.array([5, 70, 2], pa.int64())],
                names=["file", "row"],
            ),
        ]
    )
    stream = LoserStream(batches)
    assert stream.take(0, 5).tolist() == [1]
    assert stream.take(0, 10).tolist() == [9]
    assert stream.take(2, 6).tolist() == [0, 5]
    assert stream.take(2, 100).tolist() == [70]
    assert stream.take(3, 1).tolist() == []
    assert stream.take(3, 3).tolist() == [2]
    assert stream.take(4, 10).tolist() == []
    assert np.asarray(stream.take(5, 10)).dtype == np.int64

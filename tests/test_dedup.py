"""De-duplication by _id across files, property-tested: one row per id, the newest wins."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from embedder.dedup import find_losers

files_of_rows = st.lists(  # files of (id, kind, time) rows; ids collide on purpose
    st.lists(
        st.tuples(st.integers(0, 30), st.sampled_from(["int", "string"]), st.integers(0, 5)),
        max_size=25,
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=40, deadline=None)
@given(files_of_rows)
def test_exactly_the_newest_row_of_each_id_survives(
    files: list[list[tuple[int, str, int]]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for index, rows in enumerate(files):
            path = Path(tmp) / f"f{index}.parquet"
            pq.write_table(
                pa.table(
                    {
                        "_id": pa.array([str(r[0]) for r in rows], pa.string()),
                        "_id_kind": pa.array([r[1] for r in rows], pa.string()),
                        "embedded_at": pa.array([r[2] for r in rows], pa.int64()),
                    }
                ),
                path,
            )
            paths.append((pafs.LocalFileSystem(), str(path)))
        losers = find_losers(paths, memory_limit=64 << 20, work_dir=Path(tmp))

    assert not losers.unreadable
    survivors: dict[tuple[str, str], tuple[int, int, int]] = {}
    for index, rows in enumerate(files):
        dropped = set(losers.rows[index].tolist()) if index in losers.rows else set()
        for row, (doc_id, kind, at) in enumerate(rows):
            if row in dropped:
                continue
            key = (str(doc_id), kind)
            assert key not in survivors, f"{key} survived twice"
            survivors[key] = (at, index, row)
    every = {(str(r[0]), r[1]) for rows in files for r in rows}
    assert set(survivors) == every, "an id lost all its rows"
    for key, (at, index, row) in survivors.items():
        newest = max(
            (r[2], i, j)
            for i, rows in enumerate(files)
            for j, r in enumerate(rows)
            if (str(r[0]), r[1]) == key
        )
        assert (at, index, row) == newest

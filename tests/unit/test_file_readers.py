"""The file readers on real files of every format: records, bad records, ranges, and the
chunk plans cut over them."""

from __future__ import annotations

import pickle
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from embedder.errors import ConfigurationError
from embedder.files import (
    BadRecord,
    CorpusReader,
    FileRecord,
    RowRange,
    iter_records,
    open_source,
)
from embedder.files.file_queue import require_exclusive_create
from embedder.files.layout import FilesOutput
from embedder.files.plan import ChunkPlan, Selection, build_plan
from embedder.worker.documents import Doc, to_doc
from tests.support import file_corpus
from tests.support.file_corpus import FileCorpus

COUNT = 60


def _check(corpus: FileCorpus, fmt: str = "auto") -> None:
    """Every good record comes out with its id, position and text; every bad one is a
    BadRecord or a text that to_doc refuses, at its position."""
    source = open_source(
        str(corpus.path), fmt, text_field=corpus.text_field, id_field=corpus.id_field
    )
    found: dict[object, tuple[int, object]] = {}
    bad: dict[int, str] = {}
    for record in iter_records(source):
        if isinstance(record, BadRecord):
            bad[record.position] = record.cause.value
            continue
        doc = to_doc({"_id": record.id, "t": record.text}, "t")
        if not isinstance(doc, Doc):
            bad[record.position] = "text"
        elif record.id in found:
            bad[record.position] = "duplicate_id"  # the plan's to find; the reader passes it on
        else:
            found[record.id] = (record.position, record.text)
    assert bad == corpus.bad
    assert {k: t for k, (_, t) in found.items()} == corpus.texts
    assert {k: p for k, (p, _) in found.items()} == corpus.positions


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_ndjson_plain_and_compressed(tmp_path: Path, compression: str | None) -> None:
    suffix = {None: ".jsonl", "gzip": ".jsonl.gz", "zstd": ".ndjson.zst"}[compression]
    corpus = file_corpus.jsonl(tmp_path / f"c{suffix}", COUNT, compression=compression)
    _check(corpus)


def test_parquet_dataset_directory(tmp_path: Path) -> None:
    _check(file_corpus.parquet_dataset(tmp_path / "dataset", COUNT))


@pytest.mark.parametrize("delimiter", [",", "\t"])
def test_csv_and_tsv(tmp_path: Path, delimiter: str) -> None:
    name = "c.csv" if delimiter == "," else "c.tsv"
    _check(file_corpus.delimited(tmp_path / name, COUNT, delimiter=delimiter))


@pytest.mark.parametrize("shape", ["texts", "dicts", "mapping", "columns", "dataframe"])
def test_pickle_shapes(tmp_path: Path, shape: str) -> None:
    _check(file_corpus.pickled(tmp_path / f"{shape}.pkl", shape, COUNT))


def test_pickled_series_is_id_to_text(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    path = tmp_path / "s.pickle"
    path.write_bytes(pickle.dumps(pd.Series({"a": "x", "b": "y"})))
    records = list(iter_records(open_source(str(path))))
    assert records == [FileRecord(0, "a", "x", 1), FileRecord(1, "b", "y", 2)]


def test_ranges_read_the_same_records_as_the_whole(tmp_path: Path) -> None:
    """Byte ranges of a plain NDJSON file, and a compressed one read range after range by one
    reader (which keeps its place), give exactly the whole file's records."""
    for name, compression in (("a.jsonl", None), ("a.jsonl.zst", "zstd")):
        corpus = file_corpus.jsonl(tmp_path / name, COUNT, compression=compression)
        source = open_source(str(corpus.path), id_field="meta.id", text_field="body.text")
        whole = list(iter_records(source))
        with CorpusReader(source) as reader:
            plan = build_plan(reader, Selection(), chunk_rows=7)
            pieces = [r for chunk in plan.chunks for r in reader.records(chunk.range)]
            backwards = [r for c in reversed(plan.chunks) for r in reader.records(c.range)]
        assert pieces == whole
        assert sorted(backwards, key=lambda r: r.position) == whole
        if compression is None:
            assert all(c.offset is not None for c in plan.chunks)
        else:
            assert all(c.offset is None for c in plan.chunks)


def test_parquet_chunks_are_whole_row_groups(tmp_path: Path) -> None:
    corpus = file_corpus.parquet_dataset(tmp_path / "dataset", COUNT)
    source = open_source(str(corpus.path), id_field="id")
    with CorpusReader(source) as reader:
        plan = build_plan(reader, Selection(), chunk_rows=15)
        # Files of 20 rows in row groups of 9, 9 and 2: consecutive groups merged while they
        # fit in 15 rows, across files too.
        assert [(c.start, c.stop) for c in plan.chunks] == [
            (0, 9), (9, 20), (20, 29), (29, 40), (40, 49), (49, 60)
        ]  # fmt: skip
        got = [r.position for c in plan.chunks for r in reader.records(c.range)]
    assert got == list(range(COUNT))
    assert plan.duplicates == {file_corpus.DUPLICATE: 2}


def test_selections_limit_sample_and_parts(tmp_path: Path) -> None:
    corpus = file_corpus.jsonl(tmp_path / "a.jsonl", COUNT)
    source = open_source(str(corpus.path), id_field="meta.id", text_field="body.text")
    with CorpusReader(source) as reader:
        limited = build_plan(reader, Selection(limit=25), chunk_rows=10)
        assert [(c.start, c.stop) for c in limited.chunks] == [(0, 10), (10, 20), (20, 25)]
        sample = build_plan(reader, Selection(sample=12, seed=5), chunk_rows=5)
        again = build_plan(reader, Selection(sample=12, seed=5), chunk_rows=5)
        other = build_plan(reader, Selection(sample=12, seed=6), chunk_rows=5)
        taken = [p for c in sample.chunks for p in c.only]
        assert sample == again and taken != [p for c in other.chunks for p in c.only]
        assert len(taken) == len(set(taken)) == 12 and sample.rows == 12
        read = [
            r.position
            for c in sample.chunks
            for r in reader.records(c.range)
            if c.takes(r.position)
        ]
        assert read == sorted(taken)
        halves = [
            build_plan(reader, Selection(part=i, parts=2), chunk_rows=10).part_chunks()
            for i in (1, 2)
        ]
    assert [c.index for c in halves[0]] == [0, 1, 2]
    assert [c.index for c in halves[1]] == [3, 4, 5]
    assert ChunkPlan.from_bytes(sample.to_bytes()) == sample


def test_unreadable_corpora_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no corpus"):
        open_source(str(tmp_path / "missing.jsonl"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigurationError, match="--format"):
        open_source(str(tmp_path / "notes.txt"))
    corpus = file_corpus.parquet_dataset(tmp_path / "d", COUNT)
    with pytest.raises(ConfigurationError, match="no column 'body'"):
        list(iter_records(open_source(str(corpus.path), text_field="body.text")))
    (tmp_path / "n.pkl").write_bytes(pickle.dumps(42))
    with pytest.raises(ConfigurationError, match="holds a int"):
        list(iter_records(open_source(str(tmp_path / "n.pkl"))))
    with pytest.raises(ConfigurationError, match="--limit and --sample"):
        Selection(limit=1, sample=1)


def test_range_of_positions_only(tmp_path: Path) -> None:
    path = tmp_path / "t.pkl"
    path.write_bytes(pickle.dumps([f"t{i}" for i in range(10)]))
    got = list(iter_records(open_source(str(path)), RowRange(3, 6)))
    assert [(r.position, r.id, r.text) for r in got if isinstance(r, FileRecord)] == [
        (3, 3, "t3"), (4, 4, "t4"), (5, 5, "t5")
    ]  # fmt: skip


def test_a_store_without_an_exclusive_create_is_refused(tmp_path: Path) -> None:
    """Two workers could both take one chunk on a store with neither O_EXCL nor a
    conditional put (a SubTree stands in for gs:// and other pyarrow filesystems)."""
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    with pytest.raises(ConfigurationError, match="exclusive create"):
        require_exclusive_create(FilesOutput("gs://bucket/out", fs, "out"), None)
    require_exclusive_create(FilesOutput.open(str(tmp_path / "out")), None)  # O_EXCL here

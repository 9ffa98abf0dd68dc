"""``embedder export``: the consolidated output as one matrix in corpus order, checked, and
failing loudly when a row is missing, a norm is off or the corpus has another size."""

from __future__ import annotations

import asyncio
import datetime as dt
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from bson import ObjectId, json_util
from click.testing import CliRunner
from pymongo import AsyncMongoClient

from embedder.cli import cli
from embedder.ids import sort_key
from embedder.storage.consolidate import ConsolidateSettings, Consolidator
from tests.support import corpus as corpora
from tests.support.servers import FaultTei, run_python
from tests.support.worker import Workspace, seed

DIM = 64  # the test server's


@dataclass
class Exported:
    returncode: int
    stdout: str
    stderr: str


def export(out: Path, *extra: str) -> Exported:
    """``embedder export`` in this process (its start-up is seconds on a loaded machine);
    ``test_no_output_cannot_be_exported`` runs the command itself."""
    args = ["export", "--consolidated-dir", str(out), *extra]
    done = CliRunner().invoke(cli, args)
    if done.exception is not None and not isinstance(done.exception, SystemExit):
        raise done.exception
    return Exported(done.exit_code, done.stdout, done.stderr)


def consolidate(ws: Workspace, out: Path) -> None:
    report = Consolidator(ConsolidateSettings(str(ws.shards), str(out))).run()
    assert report.rows_out and not report.bad_shards, report.lines()


def load_pickle(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        loaded: dict[str, Any] = pickle.load(handle)
    return loaded


def rewrite_part(out: Path, change: Any) -> None:
    """Replace the output's first file by ``change(table)``, as damage or a hand edit would."""
    part = sorted(out.glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    pq.write_table(change(table), part)


def scale_row(table: pa.Table, row: int, factor: float) -> pa.Table:
    vectors = np.stack(table["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    vectors[row] *= factor
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    return table.set_column(table.schema.get_field_index("embedding"), "embedding", column)


async def test_a_mongodb_run_exports_in_id_order_and_fails_loudly(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei: FaultTei, tmp_path: Path
) -> None:
    # Ids of every kind the queue takes, in one collection: exported in MongoDB's order,
    # a BSON type at a time (numbers, strings, ObjectIds, dates).
    corpus = corpora.mixed_ids(8)
    extra = {-5: "minus five", 2.5: "two and a half", dt.datetime(2020, 1, 2): "a date"}
    for doc_id, text in extra.items():
        corpus.docs.append({"_id": doc_id, "lang": "en", "classified": True, "text": text})
        corpus.eligible[doc_id] = text
    await seed(mongo, ws.database, corpus)
    summary = await ws.burst([tei.url], claim_size=20)
    assert summary.embedded == len(corpus.eligible)
    out = tmp_path / "consolidated"
    await asyncio.to_thread(consolidate, ws, out)

    npy, pkl = tmp_path / "vectors.npy", tmp_path / "vectors.pkl"
    done = export(out, "--npy", str(npy), "--pickle", str(pkl))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(
        f"export: OK: ({len(corpus.eligible)}, {DIM}) float32 in id order"
    )
    ordered = sorted(corpus.eligible, key=sort_key)
    assert isinstance(ordered[0], int) and isinstance(ordered[-1], dt.datetime)
    expected = corpora.expected_vectors([corpus.eligible[i] for i in ordered], DIM)
    matrix = np.load(npy)
    assert matrix.dtype == np.float32 and matrix.shape == (len(ordered), DIM)
    np.testing.assert_allclose(matrix, expected, atol=1e-5)
    seed_shape = load_pickle(pkl)
    assert seed_shape["ids"] == ordered
    np.testing.assert_array_equal(seed_shape["embeddings"], matrix)

    # An ids file gives another order: the output's rows in the file's order.
    ids_file = tmp_path / "ids.txt"
    wanted = list(reversed(ordered))
    ids_file.write_text("".join(json_util.dumps(i) + "\n" for i in wanted))
    reordered = export(out, "--pickle", str(pkl), "--ids", str(ids_file))
    assert reordered.returncode == 0, reordered.stdout + reordered.stderr
    assert load_pickle(pkl)["ids"] == wanted
    np.testing.assert_array_equal(load_pickle(pkl)["embeddings"], matrix[::-1])

    # More rows expected than the output holds: a count, and a shape that is off.
    short = export(out, "--npy", str(npy), "--expect-rows", "100")
    assert short.returncode == 1, short.stdout
    lines = short.stdout.splitlines()
    assert lines[0].startswith("export: FAILED")
    assert f"  missing rows: {100 - len(ordered)} of 100 expected" in short.stdout
    assert f"  shape ({len(ordered)}, {DIM}), expected (100, {DIM})" in lines

    # A row deleted from the output: named by its id (the ids file knows it); NaN in the
    # matrix, None in the ids.
    table = pq.read_table(sorted(out.glob("part-*.parquet"))[0])
    lost = table["_id"][3].as_py()
    rewrite_part(out, lambda t: t.filter(pc.not_equal(t["_id"], lost)))
    missing = export(out, "--pickle", str(pkl), "--ids", str(ids_file))
    assert missing.returncode == 1
    assert "  missing rows: 1 of" in missing.stdout and lost in missing.stdout, missing.stdout
    hole = [i for i, doc_id in enumerate(load_pickle(pkl)["ids"]) if doc_id is None]
    assert len(hole) == 1 and np.isnan(load_pickle(pkl)["embeddings"][hole[0]]).all()


async def test_a_bad_norm_is_named(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei: FaultTei, tmp_path: Path
) -> None:
    corpus = corpora.tweets(40, id_kind="objectid")
    await seed(mongo, ws.database, corpus)
    await ws.burst([tei.url])
    out = tmp_path / "consolidated"
    await asyncio.to_thread(consolidate, ws, out)
    npy = tmp_path / "v.npy"
    assert (export(out, "--npy", str(npy))).returncode == 0
    first = pq.read_table(sorted(out.glob("part-*.parquet"))[0])
    bad = first["_id"][5].as_py()
    rewrite_part(out, lambda t: scale_row(t, 5, 1.01))

    off = export(out, "--npy", str(npy))
    assert off.returncode == 1
    (line,) = [x for x in off.stdout.splitlines() if "norms off 1.0" in x]
    assert "by more than 0.001: 1 rows" in line and f"id {bad} at row " in line
    assert "(norm 1.0100)" in line
    # Within a wider tolerance it passes.
    wide = export(out, "--npy", str(npy), "--norm-tolerance", "0.02")
    assert wide.returncode == 0, wide.stdout
    assert ObjectId(bad) in corpus.eligible


def test_no_output_cannot_be_exported(tmp_path: Path) -> None:
    command = ["-m", "embedder.cli", "export", "--consolidated-dir", str(tmp_path / "none")]
    nothing = run_python([*command, "--npy", str(tmp_path / "v.npy")])
    assert nothing.returncode == 3
    assert "export: COULD NOT CHECK: no output at" in nothing.stdout
    assert not (tmp_path / "v.npy").exists()
    usage = export(tmp_path / "none")
    assert usage.returncode == 2 and "name an .npy file, a pickle file or both" in usage.stderr


def run_cli(*args: str) -> Exported:
    done = CliRunner().invoke(cli, list(args))
    if done.exception is not None and not isinstance(done.exception, SystemExit):
        raise done.exception
    return Exported(done.exit_code, done.stdout, done.stderr)


def embed_file_corpus(corpus: Path, out: Path, tei: FaultTei, *extra: str) -> Path:
    """``embed-files`` then ``consolidate --output-dir``: the consolidated directory."""
    hot = out.parent / "hot"
    embedded = run_cli(
        *("embed-files", "--input", str(corpus), "--output-dir", str(out), "--hot-dir", str(hot)),
        *("--tei-urls", tei.url, "--chunk-rows", "8", *extra),
    )
    assert embedded.returncode == 0, embedded.stdout + embedded.stderr
    consolidated = run_cli("consolidate", "--output-dir", str(out))
    assert consolidated.returncode == 0, consolidated.stdout + consolidated.stderr
    return out / "consolidated"


def test_a_file_corpus_exports_in_corpus_order(tei: FaultTei, tmp_path: Path) -> None:
    texts = [f"article {i} about {corpora.SCRIPTS[i % len(corpora.SCRIPTS)]}" for i in range(30)]
    corpus = tmp_path / "wiki.jsonl"
    corpus.write_text("".join(json_util.dumps({"text": t}) + "\n" for t in texts))
    consolidated = embed_file_corpus(corpus, tmp_path / "out", tei)

    npy, pkl = tmp_path / "wiki.npy", tmp_path / "wiki.pkl"
    done = export(consolidated, "--npy", str(npy), "--pickle", str(pkl), "--expect-rows", "30")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"export: OK: (30, {DIM}) float32 in corpus order")
    np.testing.assert_allclose(np.load(npy), corpora.expected_vectors(texts, DIM), atol=1e-5)
    assert load_pickle(pkl)["ids"] == list(range(30))

    # The seed user's check that the corpus has the rows they think: a loud failure.
    wrong = export(consolidated, "--npy", str(npy), "--expect-rows", "31")
    assert wrong.returncode == 1
    assert wrong.stdout.splitlines()[1:] == [f"  shape (30, {DIM}), expected (31, {DIM})"]

    # A row lost from the output: named by its position, NaN in the matrix.
    rewrite_part(consolidated, lambda t: t.filter(pc.not_equal(t["_id"], "17")))
    lost = export(consolidated, "--npy", str(npy))
    assert lost.returncode == 1
    assert "  missing rows: 1 of 30 expected (positions 17)" in lost.stdout.splitlines()
    matrix = np.load(npy)
    assert np.isnan(matrix[17]).all() and np.isfinite(np.delete(matrix, 17, axis=0)).all()


def test_ids_from_a_field_and_bad_records(tei: FaultTei, tmp_path: Path) -> None:
    lines = [json_util.dumps({"key": f"k{i}", "text": f"text {i}"}) for i in range(20)]
    lines[4] = '{"key": "k4", "text": '  # malformed
    lines[9] = json_util.dumps({"key": "k9", "text": ""})  # empty text
    corpus = tmp_path / "papers.jsonl"
    corpus.write_text("".join(line + "\n" for line in lines))
    consolidated = embed_file_corpus(corpus, tmp_path / "out", tei, "--id-field", "key")

    pkl = tmp_path / "papers.pkl"
    done = export(consolidated, "--pickle", str(pkl))
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        "  missing rows: 2 of 20 expected (positions 4, 9 (id k9)); 2 of them bad records "
        "listed in failures.jsonl (4 (malformed), 9 (text))"
    ) in done.stdout.splitlines(), done.stdout
    ids = load_pickle(pkl)["ids"]
    assert ids[:4] == ["k0", "k1", "k2", "k3"] and ids[4] is None and ids[9] is None
    assert ids[19] == "k19"

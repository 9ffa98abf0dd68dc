"""The whole journey: embed, consolidate, verify; and verify catching what is wrong."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq
from bson import Binary, json_util
from pymongo import AsyncMongoClient

from embedder.storage import manifest as mf
from tests.support import corpus as corpora
from tests.support.servers import FaultTei, run_python
from tests.support.worker import Workspace, seed


def _verify(ws: Workspace, out: Path) -> Any:
    return run_python(ws.command("verify", "--consolidated-dir", str(out)))


async def test_embed_consolidate_verify(
    mongo_uri: str,
    db_name: str,
    tmp_path: Path,
    mongo: AsyncMongoClient[dict[str, Any]],
    tei_factory: Callable[..., FaultTei],
) -> None:
    ws = Workspace(mongo_uri, db_name, tmp_path)
    tei = tei_factory("--dimension", "32")
    corpus = corpora.tweets(300)
    await seed(mongo, db_name, corpus)
    assert await asyncio.to_thread(ws.run, [tei.url], "--once", "--shard-rows", "50") == 0, ws.log()
    out = tmp_path / "consolidated"

    consolidated = await asyncio.to_thread(ws.consolidate, out)
    assert consolidated.returncode == 0, consolidated.stderr
    assert pq.read_table(out).num_rows == len(corpus.eligible)

    good = await asyncio.to_thread(_verify, ws, out)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "verify: OK" in good.stdout and f"{len(corpus.eligible)} docs marked done" in good.stdout

    # A doc marked done whose vector is nowhere: verify must fail and name it.
    extra = next(iter(corpus.ineligible))
    await mongo[db_name]["tweets"].update_one(
        {"_id": extra}, {"$set": {"gemma_embedded_768": {"status": "done"}}}
    )
    bad = await asyncio.to_thread(_verify, ws, out)
    assert bad.returncode == 1
    assert (
        "verify: FAILED" in bad.stdout
        and "missing from the output: 1" in bad.stdout
        and str(extra) in bad.stdout
    )

    # The same rows consolidated twice (a copied file): duplicates are reported.
    await mongo[db_name]["tweets"].update_one(
        {"_id": extra}, {"$unset": {"gemma_embedded_768": ""}}
    )
    first = next(out.glob("part-*.parquet"))
    shutil.copy(first, out / "part-copy.parquet")
    manifest = mf.load(pafs.LocalFileSystem(), str(out))
    original = manifest.files[0]
    manifest.files.append(
        mf.OutputFile(
            "part-copy.parquet",
            original.rows,
            original.bytes,
            original.sha256,
            [],
            original.created_at,
        )
    )
    mf.save(pafs.LocalFileSystem(), str(out), manifest)
    doubled = await asyncio.to_thread(_verify, ws, out)
    assert doubled.returncode == 1 and f"duplicate rows: {original.rows}" in doubled.stdout


# --- verify says OK only when it is (issue 12, cases 5, 8 and 10) ---------------------------

_TARGET = "gemma_embedded_768"


async def _embedded(
    ws: Workspace,
    mongo: AsyncMongoClient[dict[str, Any]],
    tei: FaultTei,
    corpus: corpora.Corpus,
    *extra: str,
) -> Path:
    """``corpus`` embedded with ``tei`` and consolidated into ``<root>/consolidated``."""
    await seed(mongo, ws.database, corpus, collection=ws.collection)
    code = await asyncio.to_thread(ws.run, [tei.url], "--once", *extra)
    assert code == 0, ws.log()
    out = ws.root / "consolidated"
    consolidated = await asyncio.to_thread(ws.consolidate, out)
    assert consolidated.returncode == 0, consolidated.stderr
    return out


def _verify_doc(ws: Workspace, out: Path, doc_id: Any) -> Any:
    return run_python(
        ws.command("verify", "--consolidated-dir", str(out), "--doc", json_util.dumps(doc_id))
    )


def _first_line(result: Any) -> str:
    lines = str(result.stdout).splitlines()
    return lines[0] if lines else str(result.stderr)


async def test_nothing_done_and_no_output_is_nothing_to_verify(
    mongo: AsyncMongoClient[dict[str, Any]], ws: Workspace
) -> None:
    corpus = corpora.tweets(12)
    await seed(mongo, ws.database, corpus)
    result = await asyncio.to_thread(_verify, ws, ws.root / "consolidated")
    assert result.returncode == 4, result.stdout + result.stderr
    assert _first_line(result).startswith("verify: NOTHING TO VERIFY"), result.stdout
    pending = len(corpus.eligible) + len(corpus.bad)  # not marked failed until claimed
    assert f"pending {pending}, failed 0" in result.stdout, result.stdout


def test_unreachable_mongodb_could_not_check(ws: Workspace) -> None:
    from tests.support.servers import free_port

    uri = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300"
    args = ws.command("verify", "--consolidated-dir", str(ws.root / "out"))
    args[args.index("--mongo-uri") + 1] = uri
    result = run_python(args)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "verify: COULD NOT CHECK" in result.stdout and "not reachable" in result.stdout


async def test_pending_and_failed_are_counted_and_unexplained_rows_fail(
    mongo: AsyncMongoClient[dict[str, Any]],
    ws: Workspace,
    tei_factory: Callable[..., FaultTei],
) -> None:
    corpus = corpora.tweets(40)
    out = await _embedded(ws, mongo, tei_factory("--dimension", "32"), corpus)
    docs = mongo[ws.database][ws.collection]
    await docs.insert_many(
        [
            {"_id": f"late-{i}", "lang": "en", "classified": True, "text": f"late {i}"}
            for i in range(3)
        ]
    )
    good = await asyncio.to_thread(_verify, ws, out)
    assert good.returncode == 0, good.stdout + good.stderr
    assert _first_line(good) == "verify: OK"
    assert f"pending 3, failed {len(corpus.bad)}" in good.stdout, good.stdout

    # Every output row belongs to no marked doc: the output explains nothing in MongoDB.
    await docs.update_many({f"{_TARGET}.status": "done"}, {"$unset": {_TARGET: ""}})
    orphaned = await asyncio.to_thread(_verify, ws, out)
    assert orphaned.returncode == 1, orphaned.stdout
    assert _first_line(orphaned) == "verify: FAILED"
    assert f"rows whose doc is not marked done: {len(corpus.eligible)}" in orphaned.stdout
    unmarked = next(iter(corpus.eligible))
    shown = await asyncio.to_thread(_verify_doc, ws, out, unmarked)
    assert shown.returncode == 1, shown.stdout
    assert "a row in the consolidated output, but the doc is not marked done" in shown.stdout
    failed = await asyncio.to_thread(_verify_doc, ws, out, next(iter(corpus.bad)))
    assert failed.returncode == 0 and "failed: " in failed.stdout, failed.stdout


async def test_each_row_must_be_the_one_its_mark_names(
    mongo: AsyncMongoClient[dict[str, Any]],
    ws: Workspace,
    tei_factory: Callable[..., FaultTei],
) -> None:
    corpus = corpora.tweets(40)
    out = await _embedded(ws, mongo, tei_factory("--dimension", "32"), corpus, "--store-text-hash")
    docs = mongo[ws.database][ws.collection]
    ids = list(corpus.eligible)
    assert (await asyncio.to_thread(_verify, ws, out)).returncode == 0

    # The mark names another text than the row was made from (case 5: a stale row won).
    for doc_id in ids[:2]:
        await docs.update_one(
            {"_id": doc_id}, {"$set": {f"{_TARGET}.text_hash": Binary(b"\x01" * 16)}}
        )
    stale = await asyncio.to_thread(_verify, ws, out)
    assert stale.returncode == 1, stale.stdout
    assert "rows made from another text than their mark names: 2" in stale.stdout, stale.stdout
    assert str(ids[0]) in stale.stdout
    for doc_id in ids[:2]:
        assert (await asyncio.to_thread(_verify_doc, ws, out, doc_id)).returncode == 1

    # The mark names another model than the row's.
    await docs.update_one({"_id": ids[2]}, {"$set": {f"{_TARGET}.model": "other/model"}})
    other_model = await asyncio.to_thread(_verify, ws, out)
    assert other_model.returncode == 1
    assert "rows of another model than their mark names: 1" in other_model.stdout
    by_model = await asyncio.to_thread(_verify_doc, ws, out, ids[2])
    assert by_model.returncode == 1 and "another model" in by_model.stdout, by_model.stdout

    # The doc's text changed after its row was made: --doc says so and fails.
    await docs.update_one({"_id": ids[3]}, {"$set": {"text": "edited since"}})
    edited = await asyncio.to_thread(_verify_doc, ws, out, ids[3])
    assert edited.returncode == 1, edited.stdout
    assert "from another text than the doc holds now" in edited.stdout

    # A doc marked done without a row anywhere.
    orphan = corpus.ineligible[0]
    await docs.update_one(
        {"_id": orphan}, {"$set": {_TARGET: {"status": "done", "model": "embedder/hash-32"}}}
    )
    missing = await asyncio.to_thread(_verify_doc, ws, out, orphan)
    assert missing.returncode == 1 and "no row found" in missing.stdout, missing.stdout

    healthy = await asyncio.to_thread(_verify_doc, ws, out, ids[4])
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr


async def test_output_of_another_queue_or_none_could_not_check(
    mongo: AsyncMongoClient[dict[str, Any]],
    ws: Workspace,
    tei_factory: Callable[..., FaultTei],
) -> None:
    tei = tei_factory("--dimension", "32")
    corpus = corpora.tweets(30)
    ours = await seed(mongo, ws.database, corpus)
    assert await asyncio.to_thread(ws.run, [tei.url], "--once") == 0, ws.log()
    other = Workspace(ws.mongo_uri, ws.database, ws.root, collection="other")
    theirs = await seed(mongo, ws.database, corpora.tweets(5), collection="other")
    out = ws.root / "consolidated"

    # Shards not consolidated yet, of another queue than the one verified.
    shards = await asyncio.to_thread(_verify, other, out)
    assert shards.returncode == 3, shards.stdout + shards.stderr
    line = _first_line(shards)
    assert line.startswith("verify: COULD NOT CHECK") and ours.key in line and theirs.key in line

    # No output at all while docs are marked done.
    none = await asyncio.to_thread(_verify, ws, out)
    assert none.returncode == 3, none.stdout + none.stderr
    assert _first_line(none).startswith("verify: COULD NOT CHECK") and "no output" in none.stdout

    consolidated = await asyncio.to_thread(ws.consolidate, out)
    assert consolidated.returncode == 0, consolidated.stderr
    assert (await asyncio.to_thread(_verify, ws, out)).returncode == 0

    # Consolidated output of another queue (its files record the queue they hold).
    output = await asyncio.to_thread(_verify, other, out)
    assert output.returncode == 3, output.stdout
    line = _first_line(output)
    assert line.startswith("verify: COULD NOT CHECK") and ours.key in line and theirs.key in line

    # The manifest names the queue its output holds.
    manifest = mf.load(pafs.LocalFileSystem(), str(out))
    manifest.queue = theirs.key
    mf.save(pafs.LocalFileSystem(), str(out), manifest)
    named = await asyncio.to_thread(_verify, ws, out)
    assert named.returncode == 3, named.stdout
    line = _first_line(named)
    assert line.startswith("verify: COULD NOT CHECK") and ours.key in line and theirs.key in line
    manifest.queue = ours.key
    mf.save(pafs.LocalFileSystem(), str(out), manifest)
    assert (await asyncio.to_thread(_verify, ws, out)).returncode == 0

    # Every doc marked done names another model than the output's.
    await mongo[ws.database][ws.collection].update_many(
        {f"{_TARGET}.status": "done"}, {"$set": {f"{_TARGET}.model": "other/model"}}
    )
    model = await asyncio.to_thread(_verify, ws, out)
    assert model.returncode == 3, model.stdout
    assert "other/model" in _first_line(model) and "embedder/hash-32" in _first_line(model)

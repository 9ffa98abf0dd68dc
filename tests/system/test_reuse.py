"""Each distinct text embedded once, vectors reused across runs, lineage, a second model."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pymongo import AsyncMongoClient

from embedder.identity import text_hash
from embedder.ids import decode_id
from embedder.queue.connection import ensure_indexes
from embedder.queue.spec import QueueSpec
from embedder.serve.backends import HashBackend, normalized
from tests.support import corpus as corpora
from tests.support.servers import FaultTei, run_python
from tests.support.worker import Workspace, assert_complete, marks, seed

PROBE = 1  # the one text every run sends each endpoint at start-up to learn the dimension


def output_table(out: Path) -> pa.Table:
    table = pq.read_table(out)
    return table.sort_by([("_id", "ascending")]).select(
        ["_id", "_id_kind", "embedding", "model", "model_sha", "text_hash"]
    )


async def test_each_distinct_text_reaches_the_fleet_once(
    mongo: AsyncMongoClient[dict[str, Any]],
    mongo_uri: str,
    db_name: str,
    tei_factory: Callable[..., FaultTei],
    tmp_path: Path,
) -> None:
    corpus = corpora.tweets(500, duplicate_share=0.4)
    distinct = len(set(corpus.eligible.values()))
    assert distinct == 300  # 40% of the eligible texts repeat another
    outputs = {}
    for reuse in (True, False):
        ws = Workspace(mongo_uri, f"{db_name}_{reuse}", tmp_path / str(reuse))
        ws.root.mkdir()
        tei = tei_factory()
        queue = await seed(mongo, ws.database, corpus)
        flag = "--reuse-texts" if reuse else "--no-reuse-texts"
        # Small claims: repeats of a text land in other claims, in flight or already done.
        code = await asyncio.to_thread(ws.run, [tei.url], "--once", "--claim-size", "40", flag)
        assert code == 0, ws.log()
        assert_complete(ws.rows(), await marks(mongo, queue), corpus)
        stats, summary = tei.stats(), ws.summary()
        if reuse:
            assert stats["inputs"] == distinct + PROBE and stats["max_repeats"] == 1, stats
            assert summary["sent_to_fleet"] == distinct
            assert summary["reused_in_run"] == len(corpus.eligible) - distinct
            assert summary["reused_from_cache"] == 0
        else:
            assert stats["inputs"] == len(corpus.eligible) + PROBE, stats
        done = ws.consolidate(tmp_path / f"out-{reuse}")
        assert done.returncode == 0, done.stderr
        outputs[reuse] = output_table(tmp_path / f"out-{reuse}")
    assert outputs[True].num_rows == len(corpus.eligible)
    assert outputs[True].equals(outputs[False])


async def test_requeued_docs_come_from_the_cache_and_another_model_embeds_beside(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    corpus = corpora.tweets(200)
    queue = await seed(mongo, ws.database, corpus)
    assert await asyncio.to_thread(ws.run, [tei_factory().url], "--once") == 0, ws.log()
    before = await marks(mongo, queue)

    dry = run_python(
        ws.queue_command("requeue", "--model", "embedder/hash-64", "--dry-run", "--json")
    )
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["matched"] == len(corpus.eligible)
    assert await marks(mongo, queue) == before  # a dry run changes nothing

    for rebuilt in (False, True):
        if rebuilt:  # the cache lost: it is rebuilt from the shards
            shutil.rmtree(ws.root / "hot" / "vector-cache")
        done = run_python(ws.queue_command("requeue", "--model", "embedder/hash-64", "--json"))
        assert json.loads(done.stdout)["requeued"] == len(corpus.eligible), done.stderr
        again = run_python(ws.queue_command("requeue", "--model", "embedder/hash-64", "--json"))
        assert json.loads(again.stdout)["requeued"] == 0  # idempotent
        state = await marks(mongo, queue)
        assert all(state[i] is None for i in corpus.eligible)

        fresh = tei_factory()
        code = await asyncio.to_thread(ws.run, [fresh.url], "--once", log=f"again-{rebuilt}.log")
        assert code == 0, ws.log(f"again-{rebuilt}.log")
        assert fresh.stats()["inputs"] == PROBE  # nothing but the start-up probe
        assert ws.summary()["reused_from_cache"] == len(corpus.eligible)
        assert_complete(ws.rows_allowing_repeats(), await marks(mongo, queue), corpus)

    # Another model into another target field: its own indexes, shards, marks.
    other = QueueSpec(collection="tweets", database=ws.database, target_field="minilm_384")
    await ensure_indexes(mongo, other)
    other_tei = tei_factory("--model-seed", "1")
    # Not into the first model's shard directory: refused before any work.
    mixed = await asyncio.to_thread(
        ws.run, [other_tei.url], "--once", "--target-field", "minilm_384", log="mixed.log"
    )
    assert mixed != 0 and "its own --output-dir" in ws.log("mixed.log")
    assert other_tei.stats()["inputs"] == PROBE
    other_ws = Workspace(ws.mongo_uri, ws.database, ws.root / "other")
    other_ws.root.mkdir()
    code = await asyncio.to_thread(
        other_ws.run, [other_tei.url], "--once", "--target-field", "minilm_384"
    )
    assert code == 0, other_ws.log()
    assert other_tei.stats()["inputs"] == len(corpus.eligible) + 2 * PROBE
    docs = {d["_id"]: d async for d in mongo[ws.database]["tweets"].find({})}
    for doc_id in corpus.eligible:
        first, second = docs[doc_id]["gemma_embedded_768"], docs[doc_id]["minilm_384"]
        assert first["status"] == second["status"] == "done"
        assert first["model_sha"] != second["model_sha"]
        assert first["embed_key"] != second["embed_key"]
    assert set(other_ws.rows()) == set(corpus.eligible)

    # Lineage: the mark and the row say which model made a doc's vector, and from which text.
    doc_id = next(iter(corpus.eligible))
    for target, workspace in (("gemma_embedded_768", ws), ("minilm_384", other_ws)):
        shown = run_python(
            workspace.command(
                "verify",
                *("--target-field", target, "--doc", str(doc_id), "--json"),
                *("--consolidated-dir", str(workspace.root / "consolidated")),
            )
        )
        assert shown.returncode == 0, shown.stderr
        (lineage,) = json.loads(shown.stdout)
        mark = docs[doc_id][target]
        assert lineage["model"] == f"{mark['model']}@{mark['model_sha']}"
        assert lineage["rows"], lineage
        digest = text_hash(corpus.eligible[doc_id]).hex()
        for row in lineage["rows"]:
            assert row["model_sha"] == mark["model_sha"] and row["text_hash"] == digest


async def test_requeue_by_failure_reason_and_by_changed_text(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    corpus = corpora.tweets(150)
    queue = await seed(mongo, ws.database, corpus)
    tei = tei_factory()
    code = await asyncio.to_thread(ws.run, [tei.url], "--once", "--store-text-hash")
    assert code == 0, ws.log()
    empty = [i for i, reason in corpus.bad.items() if reason == "is empty"]
    assert len(empty) == 2

    def requeue(*args: str) -> dict[str, Any]:
        done = run_python(ws.queue_command("requeue", *args, "--json"))
        assert done.returncode == 0, done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report

    before = await marks(mongo, queue)
    assert requeue("--failed", "--reason", "is empty", "--dry-run")["matched"] == 2
    assert requeue("--failed", "--dry-run")["matched"] == len(corpus.bad)
    assert await marks(mongo, queue) == before
    assert requeue("--failed", "--reason", "is empty")["requeued"] == 2
    assert requeue("--failed", "--reason", "is empty")["requeued"] == 0
    state = await marks(mongo, queue)
    assert [state[i] for i in empty] == [None, None]
    assert all(state[i]["status"] == "failed" for i in corpus.bad if i not in empty)

    # Change three texts; one more doc is rewritten with the same text (not a change).
    tweets = mongo[ws.database]["tweets"]
    changed = list(corpus.eligible)[10:13]
    for number, doc_id in enumerate(changed):
        corpus.eligible[doc_id] = f"an edited text, number {number}"
        await tweets.update_one({"_id": doc_id}, {"$set": {"text": corpus.eligible[doc_id]}})
    same = list(corpus.eligible)[20]
    await tweets.update_one({"_id": same}, {"$set": {"text": corpus.eligible[same]}})
    dry = requeue("--changed-text", "--dry-run")
    assert dry["matched"] == 3 and dry["without_hash"] == 0
    assert requeue("--changed-text")["requeued"] == 3
    assert requeue("--changed-text")["requeued"] == 0

    code = await asyncio.to_thread(ws.run, [tei.url], "--once", "--store-text-hash", log="b.log")
    assert code == 0, ws.log("b.log")
    state = await marks(mongo, queue)
    for doc_id in changed:
        assert state[doc_id]["status"] == "done"
        assert state[doc_id]["text_hash"] == text_hash(corpus.eligible[doc_id])
    # The newest row of each doc is the vector of its text now; the empties failed again.
    assert_complete(ws.latest_rows(), state, corpus)


def _vectors_of_model(texts: list[str], seed: int, dimension: int = 64) -> np.ndarray:
    """What the hash model of ``seed`` answers for ``texts`` (auto-truncated at 512 tokens)."""
    backend = HashBackend(dimension, seed=seed)
    ids = [t.truncated(512, "Right").ids for t in backend.tokenize(texts)]
    return normalized(backend.embed(ids))


def _rows(shards: Path) -> dict[Any, np.ndarray]:
    table = pa.concat_tables(pq.read_table(p) for p in sorted(shards.glob("*.parquet")))
    ids = [
        decode_id(t, k)
        for t, k in zip(table["_id"].to_pylist(), table["_id_kind"].to_pylist(), strict=True)
    ]
    return dict(zip(ids, table["embedding"].to_numpy(zero_copy_only=False), strict=True))


# A TEI restarted with --pooling cls (same model id and sha), and a local model directory
# (no sha) whose files were replaced: both answer other vectors, and both are named by a new
# --model-revision (pooling is in no embed key: vLLM and Infinity do not report it; the
# revision qualifies TEI's sha).
POOLING_CLS = {"info": {"model_type": {"embedding": {"pooling": "cls"}}}, "model_seed": 3}
LOCAL = {"info": {"model_sha": None}}
LOCAL_REPLACED = {"info": {"model_sha": None}, "model_seed": 3}


@dataclass(frozen=True)
class Change:
    """What the server reports and answers before and after, and the revisions users give."""

    before: dict[str, Any]
    after: dict[str, Any]
    revisions: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())


@pytest.mark.parametrize(
    "change",
    [
        Change({}, POOLING_CLS, ((), ("--model-revision", "cls"))),
        Change(LOCAL, LOCAL_REPLACED, (("--model-revision", "v1"), ("--model-revision", "v2"))),
    ],
    ids=["pooling", "local-model-revision"],
)
async def test_a_changed_server_configuration_never_hits_the_old_cache(
    ws: Workspace,
    mongo: AsyncMongoClient[dict[str, Any]],
    tei_factory: Callable[..., FaultTei],
    change: Change,
) -> None:
    before, after, revisions = change.before, change.after, change.revisions
    corpus = corpora.tweets(120)
    queue = await seed(mongo, ws.database, corpus)
    distinct = len(set(corpus.eligible.values()))
    first = tei_factory("--faults", json.dumps(before))
    code = await asyncio.to_thread(ws.run, [first.url], "--once", *revisions[0])
    assert code == 0, ws.log()
    assert first.stats()["inputs"] == distinct + PROBE

    requeued = run_python(ws.queue_command("requeue", "--model", "embedder/hash-64", "--json"))
    assert json.loads(requeued.stdout)["requeued"] == len(corpus.eligible), requeued.stderr
    changed = tei_factory("--faults", json.dumps(after))
    code = await asyncio.to_thread(
        ws.run,
        [changed.url],
        *("--once", "--output-dir", str(ws.root / "after"), *revisions[1]),
        log="after.log",
    )

    assert code == 0, ws.log("after.log")
    assert ws.summary()["reused_from_cache"] == 0
    assert changed.stats()["inputs"] == distinct + PROBE  # every text fetched again
    rows = _rows(ws.root / "after")
    ids = list(corpus.eligible)
    got = np.stack([rows[i] for i in ids])
    np.testing.assert_allclose(
        got, _vectors_of_model([corpus.eligible[i] for i in ids], 3), atol=1e-5
    )
    state = await marks(mongo, queue)
    assert len({state[i]["embed_key"] for i in ids}) == 1
    assert {state[i]["model_sha"].rpartition("+")[2] for i in ids} == {revisions[1][1]}


async def test_replaced_model_files_without_a_new_revision_are_refused(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    corpus = corpora.tweets(40)
    await seed(mongo, ws.database, corpus)
    first = tei_factory("--faults", json.dumps(LOCAL))
    assert await asyncio.to_thread(ws.run, [first.url], "--once") == 0, ws.log()
    assert "name it with --model-revision" in ws.log()
    run_python(ws.queue_command("requeue", "--model", "embedder/hash-64"))
    replaced = tei_factory("--faults", json.dumps(LOCAL_REPLACED))
    code = await asyncio.to_thread(
        ws.run,
        [replaced.url],
        *("--once", "--output-dir", str(ws.root / "after")),
        log="after.log",
    )
    assert code != 0
    assert "--model-revision" in ws.log("after.log")
    assert replaced.stats()["inputs"] == PROBE  # nothing embedded, nothing handed from the cache

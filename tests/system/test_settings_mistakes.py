"""A configuration mistake is not a failed document (issue 12, case 9).

A mistyped option must stop the worker before it writes anything, naming the option; a doc
that is itself bad (invalid UTF-8 among them) fails alone, with a typed cause."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure

from tests.support import corpus as corpora
from tests.support.corpus import INVALID_UTF8, raw_doc
from tests.support.servers import FaultTei, run_python
from tests.support.worker import Workspace, assert_complete, marks, seed


async def test_a_mistyped_text_field_stops_before_marking_anything(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    tei = tei_factory()
    corpus = corpora.tweets(60)
    queue = await seed(mongo, ws.database, corpus)
    # The index is the queue's (its filter names no text field): a run may start with "body".
    code = await asyncio.to_thread(
        ws.run, [tei.url], "--once", "--text-field", "body", log="typo.log"
    )

    log = ws.log("typo.log")
    assert code != 0, log
    assert "--text-field" in log and "'body'" in log, log
    state = await marks(mongo, queue)
    assert all(mark is None for mark in state.values()), "a settings mistake marked docs"
    control = await mongo[ws.database]["embedder_control"].find_one({})
    assert control is not None and control["leases"] == [], "the first claim's lease was kept"

    assert await asyncio.to_thread(ws.run, [tei.url], "--once") == 0, ws.log()
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--lease-ttl", "0"),
        ("--claim-size", "0"),
        ("--claim-size", "-5"),
        ("--batch-size", "0"),
        ("--shard-rows", "0"),
        ("--shard-age", "0"),
        ("--poll-interval", "0"),
        ("--request-timeout", "-1"),
        ("--mongo-outage-timeout", "-1"),
        ("--drain-timeout", "-1"),
        ("--vector-cache-size", "-1G"),
        ("--changes-poll-interval", "0"),
    ],
)
async def test_out_of_range_options_are_refused_before_any_work(
    ws: Workspace,
    mongo: AsyncMongoClient[dict[str, Any]],
    tei_factory: Callable[..., FaultTei],
    option: str,
    value: str,
) -> None:
    tei = tei_factory()
    corpus = corpora.tweets(20)
    queue = await seed(mongo, ws.database, corpus)

    done = await asyncio.to_thread(
        run_python, ws.args([tei.url], "--once", option, value), timeout=60
    )

    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and option in errors[0], done.stderr
    assert tei.stats()["requests"] == 0
    assert all(mark is None for mark in (await marks(mongo, queue)).values())


def test_a_hash_server_of_dimension_zero_is_refused() -> None:
    done = run_python(["-m", "embedder.cli", "serve", "--backend", "hash", "--dimension", "0"])
    assert done.returncode == 2 and "--dimension" in done.stderr, done.stderr


async def test_a_doc_stored_with_invalid_utf8_fails_alone(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    """End to end where the server stores such a string (MongoDB does not check UTF-8)."""
    corpus = corpora.tweets(30)
    queue = await seed(mongo, ws.database, corpus)
    try:
        await mongo[ws.database]["tweets"].insert_one(raw_doc(7, INVALID_UTF8))
    except OperationFailure as exc:
        pytest.skip(f"this server refuses invalid UTF-8 (mongoeco); MongoDB stores it: {exc}")
    corpus.bad[7] = "not valid Unicode"

    code = await asyncio.to_thread(ws.run, [tei_factory().url], "--once")

    assert code == 0, ws.log()
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)


async def test_a_mistyped_text_field_is_caught_whatever_the_claim_size(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei: FaultTei
) -> None:
    """The settings check looks at the first claim only, and only when it holds at least 10
    docs: with --claim-size under 10 (or docs trickling into a live collection, a few per
    claim) a mistyped --text-field marks every doc failed and the run exits 0."""
    corpus = corpora.tweets(60)
    queue = await seed(mongo, ws.database, corpus)
    code = await asyncio.to_thread(
        ws.run, [tei.url], "--once", "--text-field", "body", "--claim-size", "5", log="typo.log"
    )
    state = await marks(mongo, queue)
    failed = sum(1 for m in state.values() if (m or {}).get("status") == "failed")
    assert code != 0 and failed == 0, f"exit {code}, {failed} docs marked failed"
    assert "--text-field" in ws.log("typo.log")
    control = await mongo[ws.database]["embedder_control"].find_one({})
    assert control is not None and control["leases"] == [], "a held claim's lease was kept"


async def test_a_few_docs_without_text_among_good_ones_fail_alone(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei: FaultTei
) -> None:
    """Small claims whose first docs mix good docs and docs without the text field: no
    configuration mistake, the bad ones are marked failed, the rest embedded."""
    corpus = corpora.tweets(30)
    bad = list(corpus.eligible)[::4]
    for doc in corpus.docs:
        if doc["_id"] in bad:
            del doc["text"]
    queue = await seed(mongo, ws.database, corpus)
    code = await asyncio.to_thread(ws.run, [tei.url], "--once", "--claim-size", "3")
    state = await marks(mongo, queue)
    assert code == 0, ws.log()
    assert all((state[i] or {}).get("status") == "failed" for i in bad), state
    assert sum(1 for m in state.values() if (m or {}).get("status") == "done") > 0


async def test_a_few_docs_without_the_field_are_marked_failed_not_a_stopped_worker(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei: FaultTei
) -> None:
    """Fewer docs than the settings check needs, all without the text field (a stray doc or
    two in a live collection): they are marked failed with a warning naming the option, and
    the worker carries on, rather than exiting non-zero on every restart."""
    corpus = corpora.tweets(3)
    for doc in corpus.docs:
        doc.pop("text", None)
    queue = await seed(mongo, ws.database, corpus)
    code = await asyncio.to_thread(ws.run, [tei.url], "--once", log="few.log")
    state = await marks(mongo, queue)
    assert code == 0, ws.log("few.log")
    queued = [*corpus.eligible, *corpus.bad]
    assert all((state[i] or {}).get("status") == "failed" for i in queued), state
    assert "--text-field" in ws.log("few.log")


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["requeue", "--collection", "t", "--changed-text", "--batch-size"], "--batch-size"),
        (["consolidate", "--watch", "--interval"], "--interval"),
    ],
)
@pytest.mark.parametrize("value", ["0", "-1"])
def test_batch_and_interval_options_are_refused_out_of_range(
    command: list[str], option: str, value: str, tmp_path: Path
) -> None:
    """`requeue --batch-size 0` reached MongoDB as limit(0), "no limit": one batch of every
    embedded doc with its text. `consolidate --watch --interval 0` ran back to back, a new
    lease generation each time. Both are refused before any work."""
    dirs = ["--shards-dir", str(tmp_path / "s"), "--consolidated-dir", str(tmp_path / "c")]
    extra = dirs if command[0] == "consolidate" else ["--mongo-uri", "mongodb://127.0.0.1:1/"]
    result = run_python(["-m", "embedder.cli", *command, value, *extra])
    assert result.returncode == 2 and option in result.stderr, result.stderr[-300:]

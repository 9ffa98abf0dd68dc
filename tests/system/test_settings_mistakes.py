"""A configuration mistake is not a failed document (issue 12, case 9).

A mistyped option must stop the worker before it writes anything, naming the option; a doc
that is itself bad (invalid UTF-8 among them) fails alone, with a typed cause."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
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

"""A configuration mistake is not a failed document (issue 12, case 9).

A mistyped option must stop the worker before it writes anything, naming the option; a doc
that is itself bad (invalid UTF-8 among them) fails alone, with a typed cause."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

import bson
import pytest
from bson.codec_options import CodecOptions
from bson.errors import InvalidBSON
from bson.raw_bson import RawBSONDocument
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure

from embedder.queue.spec import QueueSpec
from embedder.telemetry import Telemetry
from embedder.worker.documents import Doc, FailureCause, Rejected, reading_options, to_doc
from embedder.worker.runner import EmbedJob
from tests.support import corpus as corpora
from tests.support.servers import FaultTei, run_python
from tests.support.worker import Workspace, assert_complete, marks, seed

INVALID = b"caf\xc3 au lait \xff"  # a cut-off two-byte sequence, and a byte UTF-8 never uses


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


def test_settings_objects_check_their_ranges() -> None:
    spec = QueueSpec(collection="tweets")
    for wrong in ({"claim_size": 0}, {"lease_ttl_s": 0.0}, {"drain_timeout_s": -1.0}):
        with pytest.raises(Exception, match="must be") as raised:
            EmbedJob(mongo_uri="mongodb://x", queue=spec, fleet=None, shards=None, **wrong)  # type: ignore[arg-type]
        assert type(raised.value).__name__ == "ConfigurationError"


def _raw_doc(doc_id: int, text: bytes) -> RawBSONDocument:
    """A document whose text is the given bytes as stored, valid UTF-8 or not."""

    def string(name: bytes, value: bytes) -> bytes:
        return b"\x02" + name + b"\x00" + struct.pack("<i", len(value) + 1) + value + b"\x00"

    body = (
        b"\x12_id\x00"
        + struct.pack("<q", doc_id)
        + string(b"text", text)
        + string(b"lang", b"en")
        + b"\x08classified\x00\x01"
    )
    return RawBSONDocument(struct.pack("<i", len(body) + 5) + body + b"\x00")


def test_docs_are_decoded_so_that_invalid_utf8_fails_its_doc_alone() -> None:
    """How the worker decodes what MongoDB sends (the queue's claims, the change watcher's
    reads): a reply holding one string of invalid UTF-8 is still read, and that doc alone is
    rejected, with its cause. pymongo's default, strict, fails the whole reply."""
    raw = _raw_doc(1, INVALID).raw
    with pytest.raises(InvalidBSON):
        bson.decode(raw)
    options = reading_options(CodecOptions(tz_aware=True))
    rejected = to_doc(bson.decode(raw, codec_options=options), "text")
    assert isinstance(rejected, Rejected) and rejected.cause is FailureCause.INVALID_UNICODE
    assert "not valid Unicode" in rejected.reason
    good = bson.decode(_raw_doc(2, "naïve café".encode()).raw, codec_options=options)
    assert isinstance(to_doc(good, "text"), Doc)


async def test_a_doc_stored_with_invalid_utf8_fails_alone(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    """End to end where the server stores such a string (MongoDB does not check UTF-8)."""
    corpus = corpora.tweets(30)
    queue = await seed(mongo, ws.database, corpus)
    try:
        await mongo[ws.database]["tweets"].insert_one(_raw_doc(7, INVALID))
    except OperationFailure as exc:
        pytest.skip(f"this server refuses invalid UTF-8 (mongoeco); MongoDB stores it: {exc}")
    corpus.bad[7] = "not valid Unicode"

    code = await asyncio.to_thread(ws.run, [tei_factory().url], "--once")

    assert code == 0, ws.log()
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)


def test_failure_causes_label_the_metric_from_the_cause_not_the_reason() -> None:
    cases: dict[str, tuple[dict[str, Any], FailureCause]] = {
        "missing": ({"_id": 1}, FailureCause.MISSING_FIELD),
        "number": ({"_id": 2, "text": 5}, FailureCause.NOT_A_STRING),
        "blank": ({"_id": 3, "text": "  "}, FailureCause.EMPTY),
        "surrogate": ({"_id": 4, "text": "a\udcff"}, FailureCause.INVALID_UNICODE),
    }
    for name, (raw, cause) in cases.items():
        item = to_doc(raw, "text")
        assert isinstance(item, Rejected) and item.cause is cause, name
    telemetry = Telemetry()
    telemetry.prepare([])
    # A server's reason that happens to contain another cause's words counts as the server's.
    telemetry.failed(
        "Validation: input is empty after normalization", FailureCause.REJECTED_BY_SERVER
    )
    registry: CollectorRegistry = telemetry.registry
    assert (
        registry.get_sample_value("embedder_docs_failed_total", {"cause": "rejected_by_server"})
        == 1
    )
    assert registry.get_sample_value("embedder_docs_failed_total", {"cause": "empty_text"}) == 0

"""Settings objects and doc decoding refuse mistakes, without servers."""

from __future__ import annotations

from typing import Any

import bson
import pytest
from bson.codec_options import CodecOptions
from bson.errors import InvalidBSON
from prometheus_client import CollectorRegistry

from embedder.errors import ConfigurationError
from embedder.queue.spec import QueueSpec
from embedder.telemetry import Telemetry
from embedder.worker.documents import Doc, FailureCause, Rejected, reading_options, to_doc
from embedder.worker.runner import EmbedJob
from tests.support.corpus import INVALID_UTF8, raw_doc


def test_settings_objects_check_their_ranges() -> None:
    spec = QueueSpec(collection="tweets")
    for wrong in ({"claim_size": 0}, {"lease_ttl_s": 0.0}, {"drain_timeout_s": -1.0}):
        with pytest.raises(ConfigurationError, match="must be"):
            EmbedJob(mongo_uri="mongodb://x", queue=spec, fleet=None, shards=None, **wrong)  # type: ignore[arg-type]


def test_docs_are_decoded_so_that_invalid_utf8_fails_its_doc_alone() -> None:
    """How the worker decodes what MongoDB sends (the queue's claims, the change watcher's
    reads): a reply holding one string of invalid UTF-8 is still read, and that doc alone is
    rejected, with its cause. pymongo's default, strict, fails the whole reply."""
    raw = raw_doc(1, INVALID_UTF8).raw
    with pytest.raises(InvalidBSON):
        bson.decode(raw)
    options = reading_options(CodecOptions(tz_aware=True))
    rejected = to_doc(bson.decode(raw, codec_options=options), "text")
    assert isinstance(rejected, Rejected) and rejected.cause is FailureCause.INVALID_UNICODE
    assert "not valid Unicode" in rejected.reason
    good = bson.decode(raw_doc(2, "naïve café".encode()).raw, codec_options=options)
    assert isinstance(to_doc(good, "text"), Doc)


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

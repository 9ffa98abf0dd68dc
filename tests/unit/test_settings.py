"""Settings objects and documents that check themselves, without servers (issue 12, case 9)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import bson
import pytest
from bson.codec_options import CodecOptions
from bson.errors import InvalidBSON
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from embedder.cli import cli
from embedder.errors import ConfigurationError
from embedder.fleet.routing import FleetSettings
from embedder.queue.settings import WorkQueueSettings
from embedder.queue.spec import QueueSpec
from embedder.storage.shards import ShardSettings
from embedder.telemetry import Telemetry
from embedder.worker.change_watch import ChangeWatchSettings
from embedder.worker.documents import Doc, FailureCause, Rejected, reading_options, to_doc
from embedder.worker.pipeline import WorkerSettings
from embedder.worker.reuse import ReuseSettings
from embedder.worker.runner import EmbedJob
from tests.support.corpus import INVALID_UTF8, raw_doc


def _job(**stages: Any) -> EmbedJob:
    return EmbedJob(
        "mongodb://x",
        QueueSpec(collection="tweets"),
        FleetSettings(urls=("http://127.0.0.1:1",)),
        ShardSettings(cold_uri="shards", hot_dir=Path("hot")),
        **stages,
    )


def test_settings_objects_check_their_ranges() -> None:
    wrong: list[Callable[[], object]] = [
        lambda: WorkQueueSettings(claim_size=0),
        lambda: WorkQueueSettings(lease_ttl_s=0.0),
        lambda: WorkQueueSettings(outage_timeout_s=-1.0),
        lambda: WorkerSettings(drain_timeout_s=-1.0),
        lambda: ChangeWatchSettings(poll_interval_s=0.0),
        lambda: ReuseSettings(vector_cache_bytes=-1),
    ]
    for build in wrong:
        with pytest.raises(ConfigurationError, match="must be"):
            build()


def test_watching_changes_in_a_run_that_exits_when_done_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="--watch-changes cannot be used with --once"):
        _job(worker=WorkerSettings(once=True), changes=ChangeWatchSettings())
    assert _job(changes=ChangeWatchSettings()).changes is not None
    assert _job(worker=WorkerSettings(once=True)).changes is None


def test_the_command_refuses_watch_changes_with_once_before_connecting() -> None:
    args = ["embed", "--collection", "tweets", "--tei-urls", "http://127.0.0.1:1"]
    done = CliRunner().invoke(cli, [*args, "--once", "--watch-changes"])
    assert done.exit_code == 2, done.output
    errors = [line for line in done.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, done.output
    assert "--watch-changes" in errors[0] and "--once" in errors[0], done.output


def test_a_settings_object_refusing_a_value_is_a_usage_error() -> None:
    args = ["embed", "--collection", "tweets", "--tei-urls", " , "]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 2, done.output
    assert "Error: no embedding endpoint given (--tei-urls)" in done.output


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

"""Prometheus series and the run summary, updated together through one object.

Each worker owns a :class:`Telemetry` with its own registry (no global state), exposed on
``--metrics-port``. Under ``embed --processes N`` the workers' metrics go to files that the
supervisor serves as one (prometheus_client's multiprocess mode): counters and histograms add
up, and each gauge says how its processes' values combine (``multiprocess_mode``, ignored by
a worker on its own). Info and Enum metrics do not work in that mode: none is used. Names
follow Prometheus conventions: ``embedder_`` prefix, ``_total`` for counters, ``_seconds`` and
``_bytes`` units.
"""

from __future__ import annotations

import enum
import time
from collections import Counter as TallyCounter
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from embedder.errors import FaultKind
from embedder.worker.documents import FailureCause
from embedder.worker.phases import Phases

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass
class Summary:
    """What a run did, for the closing report and for tests."""

    started: float = field(default_factory=time.monotonic)
    claimed: int = 0
    embedded: int = 0  # docs whose vectors came back (from the fleet, or re-used)
    marked: int = 0  # of those, docs in a durable shard and marked done
    failed: int = 0
    failure_reasons: TallyCounter[str] = field(default_factory=TallyCounter)
    requests: int = 0
    retries: int = 0
    errors_by_kind: TallyCounter[str] = field(default_factory=TallyCounter)
    tokens: int = 0
    shards: int = 0
    shard_bytes: int = 0
    leases_taken_over: int = 0
    sent_to_fleet: int = 0  # docs whose text went to the fleet
    reused_in_run: int = 0  # docs that got the vector of an equal text embedded in this run
    reused_from_cache: int = 0  # docs that got a vector from the cache of earlier runs
    phases: Phases = field(default_factory=Phases)  # where the run's time went
    # Time spent polling with nothing to do (no lease held, nothing claimable): not work.
    idle_s: float = 0.0
    idle_since: float | None = None

    def idle(self, now: float | None = None) -> None:
        """From now on the worker waits for work (idempotent)."""
        if self.idle_since is None:
            self.idle_since = time.monotonic() if now is None else now

    def busy(self, now: float | None = None) -> None:
        """From now on the worker works (idempotent)."""
        if self.idle_since is not None:
            self.idle_s += (time.monotonic() if now is None else now) - self.idle_since
            self.idle_since = None

    def working_s(self, now: float | None = None) -> float:
        """Wall time since the start, less the idle waits."""
        now = time.monotonic() if now is None else now
        ongoing = now - self.idle_since if self.idle_since is not None else 0.0
        return max(now - self.started - self.idle_s - ongoing, 0.0)

    def as_dict(self) -> dict[str, object]:
        now = time.monotonic()
        elapsed = now - self.started
        working = self.working_s(now)
        return {
            "claimed": self.claimed,
            "embedded": self.embedded,
            "marked": self.marked,
            "failed": self.failed,
            "failure_reasons": dict(self.failure_reasons.most_common()),
            "requests": self.requests,
            "retries": self.retries,
            "errors_by_kind": dict(self.errors_by_kind),
            "tokens": self.tokens,
            "shards": self.shards,
            "shard_bytes": self.shard_bytes,
            "leases_taken_over": self.leases_taken_over,
            "sent_to_fleet": self.sent_to_fleet,
            "reused_in_run": self.reused_in_run,
            "reused_from_cache": self.reused_from_cache,
            "elapsed_s": round(elapsed, 3),  # wall time
            "working_s": round(working, 3),  # wall time less idle polling
            "docs_per_s": round(self.embedded / working, 1) if working > 0 else 0.0,
            "phases": self.phases.as_dict(),
        }

    def lines(self) -> list[str]:
        """The closing report as an operator reads it."""
        numbers = self.as_dict()
        lines = [
            f"embedded {self.embedded} docs ({self.marked} durable and marked) in "
            f"{numbers['working_s']}s of work ({numbers['docs_per_s']} docs/s; "
            f"{numbers['elapsed_s']}s wall); failed {self.failed}; requests {self.requests}, "
            f"retries {self.retries}; shards {self.shards} ({self.shard_bytes} bytes)"
        ]
        lines.extend(f"  failed x{n}: {reason}" for reason, n in self.failure_reasons.most_common())
        return lines


class Telemetry:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.summary = Summary()
        r = self.registry
        self.docs_embedded = Counter(
            "embedder_docs_embedded_total",
            "Docs whose vectors came back (from the fleet, or re-used), durable or not yet.",
            registry=r,
        )
        self.docs_marked = Counter(
            "embedder_docs_marked_total",
            "Docs whose vectors are in a durable shard, marked done.",
            registry=r,
        )
        self.docs_failed = Counter(
            "embedder_docs_failed_total",
            "Docs that failed for good, by cause.",
            ["cause"],
            registry=r,
        )
        self.tokens = Counter(
            "embedder_tokens_total", "Tokens embedded, as the servers counted them.", registry=r
        )
        self.requests = Counter(
            "embedder_requests_total",
            "Embedding requests by endpoint and outcome.",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "embedder_request_duration_seconds",
            "Latency of successful embedding requests.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "embedder_request_errors_total",
            "Failed embedding requests by endpoint and kind.",
            ["endpoint", "kind"],
            registry=r,
        )
        self.retries = Counter(
            "embedder_retries_total", "Requests sent again after a failure.", ["kind"], registry=r
        )
        self.ejections = Counter(
            "embedder_endpoint_ejections_total",
            "Endpoints taken out of rotation, by the fault kind that did it.",
            ["endpoint", "kind"],
            registry=r,
        )
        self.refusals = Counter(
            "embedder_endpoint_refused_total",
            "Re-admission checks an endpoint failed (its /info, dimension or probe vector), "
            "by reason.",
            ["endpoint", "reason"],
            registry=r,
        )
        self.inflight_requests = Gauge(
            "embedder_inflight_requests",
            "Requests in flight per endpoint.",
            ["endpoint"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.inflight_inputs = Gauge(
            "embedder_inflight_inputs",
            "Inputs in flight per endpoint.",
            ["endpoint"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.concurrency_limit = Gauge(
            "embedder_concurrency_limit",
            "Current limit on inputs in flight per endpoint.",
            ["endpoint"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_share = Gauge(
            "embedder_queue_share",
            "Adaptive pacing: how much of one request's unloaded time a new one may wait.",
            ["endpoint"],
            registry=r,
            multiprocess_mode="liveall",  # each process's own controller: one series per pid
        )
        self.endpoint_up = Gauge(
            "embedder_endpoint_up",
            "1 when the endpoint is in rotation.",
            ["endpoint"],
            registry=r,
            multiprocess_mode="livemin",  # up only where every process has it in rotation
        )
        self.batch_size = Histogram(
            "embedder_batch_size",
            "Inputs per embedding request.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.shards = Counter(
            "embedder_shards_written_total", "Parquet shards made durable.", registry=r
        )
        self.shard_bytes = Counter(
            "embedder_shard_bytes_total", "Bytes of durable shards.", registry=r
        )
        self.mark_seconds = Histogram(
            "embedder_mark_duration_seconds",
            "Time to mark one shard's docs in MongoDB.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.texts_sent = Counter(
            "embedder_texts_sent_total", "Docs whose text went to the fleet.", registry=r
        )
        self.texts_reused = Counter(
            "embedder_texts_reused_total",
            "Docs that got the vector of an equal text: embedded earlier in this run, or cached.",
            ["source"],
            registry=r,
        )
        self.leases = Gauge(
            "embedder_leases", "Leases this worker holds.", registry=r, multiprocess_mode="livesum"
        )
        # Every process of a host counts the same queue: the latest count is the one to show.
        self.queue_pending = Gauge(
            "embedder_queue_pending",
            "Docs waiting in the work queue.",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.queue_done = Gauge(
            "embedder_queue_done",
            "Docs marked done in the target field.",
            registry=r,
            multiprocess_mode="livemostrecent",
        )

    def prepare(self, endpoints: list[str]) -> None:
        """Create every labelled series at zero, so they exist (and rate() works) from the
        first scrape rather than from the first event of their kind."""
        for cause in FAILURE_CAUSES:
            self.docs_failed.labels(cause=cause)
        for kind in FaultKind:
            self.retries.labels(kind)
            for endpoint in endpoints:
                self.errors.labels(endpoint, kind)
        for source in ("run", "cache"):
            self.texts_reused.labels(source)
        for endpoint in endpoints:
            for outcome in ("ok", "error"):
                self.requests.labels(endpoint, outcome)
            self.inflight_requests.labels(endpoint)
            self.inflight_inputs.labels(endpoint)

    # Each method below is one event, recorded in the summary and in Prometheus.

    def sent(self, count: int) -> None:
        self.summary.sent_to_fleet += count
        self.texts_sent.inc(count)

    def reused(self, in_run: int, from_cache: int) -> None:
        self.summary.reused_in_run += in_run
        self.summary.reused_from_cache += from_cache
        self.texts_reused.labels("run").inc(in_run)
        self.texts_reused.labels("cache").inc(from_cache)

    def claimed(self, count: int) -> None:
        self.summary.claimed += count

    def embedded(self, count: int) -> None:
        self.summary.embedded += count
        self.docs_embedded.inc(count)

    def marked(self, count: int) -> None:
        self.summary.marked += count
        self.docs_marked.inc(count)

    def failed(self, reason: str, cause: enum.StrEnum) -> None:
        """A doc (``FailureCause``) or a file corpus's record (``BadCause``) failed for good."""
        self.summary.failed += 1
        self.summary.failure_reasons[reason] += 1
        self.docs_failed.labels(cause=cause.value).inc()

    def request_ok(self, endpoint: str, inputs: int, seconds: float, tokens: int | None) -> None:
        self.summary.requests += 1
        self.requests.labels(endpoint, "ok").inc()
        self.request_seconds.labels(endpoint).observe(seconds)
        self.batch_size.observe(inputs)
        if tokens:
            self.summary.tokens += tokens
            self.tokens.inc(tokens)

    def request_failed(self, endpoint: str, kind: FaultKind) -> None:
        self.summary.requests += 1
        self.summary.errors_by_kind[str(kind)] += 1
        self.requests.labels(endpoint, "error").inc()
        self.errors.labels(endpoint, kind).inc()

    def retried(self, kind: FaultKind) -> None:
        self.summary.retries += 1
        self.retries.labels(kind).inc()

    def ejected(self, endpoint: str, kind: FaultKind) -> None:
        self.ejections.labels(endpoint, kind).inc()

    def refused(self, endpoint: str, reason: FaultKind) -> None:
        self.refusals.labels(endpoint, reason).inc()

    def shard_written(self, size: int) -> None:
        self.summary.shards += 1
        self.summary.shard_bytes += size
        self.shards.inc()
        self.shard_bytes.inc(size)

    def lease_taken_over(self) -> None:
        self.summary.leases_taken_over += 1


FAILURE_CAUSES = tuple(cause.value for cause in FailureCause)

"""The embedding fleet: routing, limits, health, retries, splitting and narrowing.

One :class:`Fleet` fronts every embedding endpoint of a run, whatever its kind (TEI, vLLM,
Infinity, another OpenAI-compatible API; ``protocol``). A request goes to the healthy endpoint
with the fewest requests in flight that has room for its inputs. What a failed request means
is read from one table (``errors.FAULTS``): a server's fault (overload, outage, timeout, 424,
5xx, garbage, another dimension or model) is retried with backoff and jitter on another
endpoint, counts against the endpoint that made it (eject, probe back, check its ``/info`` and
its vectors again) and never fails a doc; past the outage bound the run stops, marking nothing.
A batch the server finds too large is split; a batch it rejects is narrowed down to the input
at fault. A fault one input can cause on any server (garbage such as NaN, a failed forward
pass) is narrowed the same way while the endpoint still embeds the probe text well, and counts
against the endpoint when it does not. A single input so refused fails for good only when
another endpoint of the fleet, asked in isolation, refuses it too: while no other endpoint is
in rotation it waits for one (up to the outage bound); only in a one-endpoint fleet is the
isolated refusal its own confirmation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

from embedder.errors import (
    BatchTooLargeError,
    ConfigurationError,
    EndpointError,
    FaultKind,
    FleetUnavailableError,
)
from embedder.fleet import tei_protocol as tei
from embedder.fleet.endpoint import EndpointClient, EndpointReply
from embedder.fleet.limits import (
    AdaptiveInflightLimit,
    AdaptiveSettings,
    FixedInflightLimit,
    InflightLimit,
)
from embedder.fleet.protocol import EmbedOptions, ServerInfo, refusals
from embedder.fleet.readiness import wait_for_health
from embedder.identity import same_vector
from embedder.telemetry import Telemetry
from embedder.worker.batching import BatchLimits, halves

log = logging.getLogger(__name__)

PROBE_TEXT = "dimension probe"  # embedded at start and at every re-admission
# Requests' worth of inputs in flight at most on a server without admission control (vLLM,
# Infinity, hosted APIs): the adaptive limit keeps the queue short well below it.
UNADMITTED_CEILING_REQUESTS = 32
# Where a server does not say its limits: no token budget beyond the per-request byte limit.
_UNREPORTED_LIMIT = 1 << 30


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 10.0
    # How long a request is retried on the endpoints' faults, and how long the fleet may have
    # no endpoint in rotation, before the run gives up (marking nothing).
    outage_timeout_s: float = 900.0

    def __post_init__(self) -> None:
        if self.outage_timeout_s <= 0 or self.initial_backoff_s <= 0:
            raise ConfigurationError(f"invalid retry policy: {self}")


@dataclass(frozen=True, slots=True)
class FleetSettings:
    urls: tuple[str, ...]
    options: EmbedOptions = field(default_factory=EmbedOptions)
    batch_size: int = 32
    # Requests in flight per endpoint; None adapts each endpoint's limit to its latency.
    concurrency: int | None = None
    adaptive: AdaptiveSettings = field(default_factory=AdaptiveSettings)
    api_key: str | None = None
    request_timeout_s: float = 120.0
    connect_timeout_s: float = 5.0
    payload_limit: int = tei.DEFAULT_PAYLOAD_LIMIT
    probe_interval_s: float = 2.0
    eject_after: int = 2  # faults in a row that count against an endpoint before it leaves
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # The model's revision where the server reports none (vLLM, Infinity, a TEI serving a local
    # directory): in the embed key, the marks and the shards, so replaced model files never
    # share a key with the old ones.
    model_revision: str | None = None
    # How long to wait at start for a server to answer /health (TEI loading its model).
    wait_for_servers_s: float = 0.0

    # The ``model`` of OpenAI requests, where a server lists several (a hosted API).
    openai_model: str | None = None

    def __post_init__(self) -> None:
        if not self.urls:
            raise ConfigurationError("no embedding endpoint given (--tei-urls)")
        if self.batch_size < 1 or (self.concurrency is not None and self.concurrency < 1):
            raise ConfigurationError("--batch-size and --concurrency must be at least 1")


@dataclass(slots=True)
class Endpoint:
    client: EndpointClient
    info: ServerInfo | None = None
    limit: InflightLimit = field(default_factory=lambda: FixedInflightLimit(0))
    # (sent at, inputs) of the requests in flight, in the order sent, and when the last answer
    # came: the adaptive limit's pacing predicts from them how long a new request would wait.
    sent: list[tuple[float, int]] = field(default_factory=list)
    answered_at: float = 0.0
    up: bool = False
    consecutive_faults: int = 0
    refused: FaultKind | None = None  # why its last re-admission check kept it out
    paused_until: float = 0.0  # a Retry-After: nothing new is sent before (monotonic clock)

    @property
    def name(self) -> str:
        return self.client.url

    @property
    def input_limit(self) -> int:
        return self.limit.value

    @property
    def inflight_requests(self) -> int:
        return len(self.sent)

    @property
    def inflight_inputs(self) -> int:
        return sum(inputs for _, inputs in self.sent)

    def under_limit(self, inputs: int) -> bool:
        return self.inflight_inputs == 0 or self.inflight_inputs + inputs <= self.input_limit

    def has_room(self, inputs: int, now: float) -> bool:
        return (
            now >= self.paused_until
            and self.under_limit(inputs)
            and (self.inflight_inputs == 0 or self.wait_s(now) <= 0)
        )

    def wait_s(self, now: float) -> float:
        """How long until a new request would queue at the server no longer than the limit
        allows, predicting that the server answers our requests in order, one service time
        each; zero without pacing."""
        pacing = self.limit.pacing()
        if pacing is None or not self.sent:
            return 0.0
        per_input, allowed = pacing
        finish = self.answered_at
        for sent_at, inputs in self.sent:
            finish = max(finish, sent_at) + per_input * inputs
        return max(0.0, finish - now - allowed)


@dataclass(slots=True)
class FleetResult:
    """One row per input, in order; ``failures`` names the rows that failed for good, and why.

    A failed row holds zeros and must not be used.
    """

    vectors: np.ndarray
    failures: dict[int, str]

    def succeeded(self) -> np.ndarray:
        """A boolean mask of the rows that hold real vectors."""
        mask = np.ones(len(self.vectors), dtype=bool)
        mask[list(self.failures)] = False
        return mask


class Fleet:
    def __init__(
        self, settings: FleetSettings, telemetry: Telemetry, http: httpx.AsyncClient
    ) -> None:
        self.settings = settings
        self._telemetry = telemetry
        self._http = http
        self._endpoints = [
            Endpoint(EndpointClient(u, http, api_key=settings.api_key, model=settings.openai_model))
            for u in settings.urls
        ]
        telemetry.prepare([e.name for e in self._endpoints])
        self._changed = asyncio.Condition()
        self._info: ServerInfo | None = None
        self._reference: np.ndarray | None = None  # the probe text's vector at start
        self._batch_cap = settings.batch_size
        self._down_since: float | None = None
        self._prober: asyncio.Task[None] | None = None
        self.dimension = 0
        self.probe_vector = np.zeros(0, np.float32)  # the probe text's vector, learnt at start

    @classmethod
    async def connect(cls, settings: FleetSettings, telemetry: Telemetry) -> Fleet:
        timeout = httpx.Timeout(settings.request_timeout_s, connect=settings.connect_timeout_s)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        http = httpx.AsyncClient(timeout=timeout, limits=limits)
        fleet = cls(settings, telemetry, http)
        try:
            await wait_for_health([e.client for e in fleet._endpoints], settings.wait_for_servers_s)
            await fleet._start()
        except BaseException:
            await http.aclose()
            raise
        return fleet

    async def _start(self) -> None:
        answers = await asyncio.gather(
            *(e.client.info() for e in self._endpoints), return_exceptions=True
        )
        silent: list[str] = []
        for endpoint, answer in zip(self._endpoints, answers, strict=True):
            if isinstance(answer, ServerInfo):
                self._admit(endpoint, answer)
            elif isinstance(answer, ConfigurationError):
                raise answer
            else:
                log.warning("endpoint %s is not answering (%s); probing it", endpoint.name, answer)
                self._set_up(endpoint, False)
                reason = answer.reason if isinstance(answer, EndpointError) else str(answer)
                silent.append(f"{endpoint.name} ({reason})")
        if self._info is None:
            raise ConfigurationError(
                f"no embedding endpoint answered /info or a model listing: {', '.join(silent)}; "
                "check --tei-urls and that an embedding server (TEI, vLLM, Infinity) runs there"
            )
        await self._learn_dimension()
        self._prober = asyncio.create_task(self._probe_forever(), name="fleet-prober")

    def _admit(self, endpoint: Endpoint, info: ServerInfo) -> None:
        info = self._with_revision(info)
        problems = refusals(info, endpoint.client.wire.api, self.settings.options)
        if problems:
            raise ConfigurationError(f"{endpoint.name}: {'; '.join(problems)}")
        if self._info is not None:
            differences = self._info.identity.differences(info.identity)
            ours, theirs = (i.truncates(self.settings.options) for i in (self._info, info))
            if ours != theirs:
                differences.append(
                    f"over-long inputs {'cut' if ours else 'refused'} -> "
                    f"{'cut' if theirs else 'refused'} (make it explicit: --truncate or "
                    "--no-truncate)"
                )
            if differences:
                raise ConfigurationError(
                    f"endpoints serve different models or settings: {endpoint.name} "
                    f"({info.kind}) differs from the others in {'; '.join(differences)}"
                )
        self._info = self._info or info
        endpoint.info = info
        # TEI refuses a whole request with 429 when its inputs find no free permit, so the
        # inputs we keep in flight stay at half the server's permits at most. A server without
        # admission control queues whatever it gets: only the adaptive limit keeps it short.
        if info.max_concurrent_requests is None:
            cap = UNADMITTED_CEILING_REQUESTS * self.batch_size
        else:
            cap = max(1, info.max_concurrent_requests // 2)
        if self.settings.concurrency is None:
            endpoint.limit = AdaptiveInflightLimit(self.batch_size, cap, self.settings.adaptive)
        else:
            endpoint.limit = FixedInflightLimit(
                min(cap, self.settings.concurrency * self.batch_size)
            )
        self._gauge_limit(endpoint)
        self._set_up(endpoint, True)

    def _with_revision(self, info: ServerInfo) -> ServerInfo:
        """``info`` with ``model_sha`` the revision the fleet records: the server's, else the
        user's (vLLM, Infinity and hosted APIs report none). Where both are given and differ,
        the user's qualifies the server's (``<sha>+<name>``): it names a setting that changes
        vectors but is in no key (TEI's ``--pooling``, ``--default-prompt``, its dtype)."""
        revision = self.settings.model_revision
        if revision is None or info.model_sha == revision:
            return info
        qualified = revision if info.model_sha is None else f"{info.model_sha}+{revision}"
        return dataclasses.replace(info, model_sha=qualified)

    async def _learn_dimension(self) -> None:
        """Embed one probe text on every live endpoint: all must agree on its vector."""
        vectors: dict[str, np.ndarray] = {}
        live = [e for e in self._endpoints if e.up]
        # All at once: a fleet starts in one round trip, not one per endpoint.
        probes = await asyncio.gather(
            *(e.client.embed([PROBE_TEXT], self.settings.options) for e in live),
            return_exceptions=True,
        )
        for endpoint, probe in zip(live, probes, strict=True):
            if isinstance(probe, EndpointError):
                log.warning(
                    "endpoint %s failed its probe (%s); probing it", endpoint.name, probe.reason
                )
                self._set_up(endpoint, False)
                continue
            if isinstance(probe, BaseException):
                raise probe
            vectors[endpoint.name] = probe.vectors[0]
        if not vectors:
            raise ConfigurationError("no embedding endpoint could embed a probe text")
        dimensions = {name: len(v) for name, v in vectors.items()}
        if len(set(dimensions.values())) > 1:
            raise ConfigurationError(f"endpoints produce different dimensions: {dimensions}")
        self._reference = next(iter(vectors.values()))
        differing = [n for n, v in vectors.items() if not same_vector(v, self._reference)]
        if differing:
            raise ConfigurationError(
                "endpoints answer different vectors for the same text (another model or "
                f"model files behind the same /info?): {', '.join(sorted(vectors))}"
            )
        if self.settings.options.normalize:
            norm = float(np.linalg.norm(self._reference))
            if abs(norm - 1.0) > 1e-3:
                raise ConfigurationError(
                    f"the endpoints answer vectors of norm {norm:.4f} where normalised ones were "
                    "asked for: the server does not normalise this model (--no-normalize)"
                )
        self.dimension = len(self._reference)
        self.probe_vector = self._reference
        if self.info.model_sha is None:
            log.warning(
                "the servers report no revision for %s (vLLM, Infinity, a local model "
                "directory, a TEI without --revision): name it with --model-revision, or "
                "replaced model files will share the vector cache and marks of the old ones",
                self.info.model_id,
            )

    @property
    def info(self) -> ServerInfo:
        """The fleet's model as its first endpoint reports it, with ``model_sha`` the recorded
        revision."""
        assert self._info is not None, "fleet not connected"
        return self._info

    @property
    def batch_size(self) -> int:
        server = min(
            (
                e.info.max_client_batch_size
                for e in self._endpoints
                if e.info and e.info.max_client_batch_size is not None
            ),
            default=self._batch_cap,
        )
        return max(1, min(self._batch_cap, server))

    def batch_limits(self) -> BatchLimits:
        infos = [e.info for e in self._endpoints if e.info]
        return BatchLimits(
            max_inputs=self.batch_size,
            max_tokens=min(i.max_batch_tokens or _UNREPORTED_LIMIT for i in infos),
            max_bytes=int(self.settings.payload_limit * 0.9),
            max_input_tokens=min(i.max_input_length or _UNREPORTED_LIMIT for i in infos),
            truncating=all(i.truncates(self.settings.options) for i in infos),
        )

    @property
    def endpoints(self) -> Sequence[Endpoint]:
        return tuple(self._endpoints)

    @property
    def max_inputs_in_flight(self) -> int:
        """The most inputs the fleet may ever have in flight: the sum of the ceilings."""
        return sum(e.limit.ceiling for e in self._endpoints if e.info)

    @property
    def idle_endpoints(self) -> int:
        """Endpoints in rotation with no request of ours in flight."""
        return sum(1 for e in self._endpoints if e.up and not e.sent)

    @property
    def ramping(self) -> bool:
        """Some endpoint in rotation still finds its adaptive limit's level."""
        return any(e.limit.ramping for e in self._endpoints if e.up)

    async def close(self) -> None:
        if self._prober:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
        await self._http.aclose()

    # --- embedding ------------------------------------------------------------------------

    async def embed(self, texts: Sequence[str]) -> FleetResult:
        result = FleetResult(np.zeros((len(texts), self.dimension), np.float32), {})
        await self._embed_into(list(texts), list(range(len(texts))), result)
        return result

    async def _embed_into(
        self,
        texts: list[str],
        positions: list[int],
        result: FleetResult,
        refusal: EndpointError | None = None,
    ) -> None:
        """Embed ``texts`` into ``result``; ``refusal`` is an earlier endpoint's refusal of this
        single input, to be confirmed on another endpoint."""
        exclude = frozenset({refusal.endpoint}) if refusal is not None else frozenset()
        limit: int | None = None
        fault: EndpointError | None
        try:
            embedded = await self._send(texts, exclude)
        except EndpointError as exc:  # the request's own fault: the table says to divide
            assert exc.means.splits, exc
            limit = exc.limit if isinstance(exc, BatchTooLargeError) else None
            if limit is not None:
                self._batch_cap = min(self._batch_cap, limit)
            fault = exc
        except _NarrowInstead as narrowed:
            fault = narrowed.fault
        else:
            fault = None
        if fault is not None:
            if len(texts) > 1:
                await self._divide(texts, positions, result, limit)
            elif refusal is None and self._others_exist(fault.endpoint):
                log.info(
                    "endpoint %s refused one input (%s): asking another", fault.endpoint, fault
                )
                await self._embed_into(texts, positions, result, fault)
            else:
                result.failures[positions[0]] = _failure_reason(fault, refusal)
            return
        if refusal is not None:
            log.warning(
                "endpoint %s refused an input that another accepted: %s",
                refusal.endpoint,
                refusal.reason,
            )
        result.vectors[positions] = embedded.vectors

    def _others_exist(self, name: str) -> bool:
        """Whether the fleet has another endpoint to confirm ``name``'s refusal, up or not:
        one that is down is waited for, never skipped."""
        return any(e.name != name for e in self._endpoints)

    async def _divide(
        self, texts: list[str], positions: list[int], result: FleetResult, limit: int | None
    ) -> None:
        parts = list(zip(halves(texts, limit), halves(positions, limit), strict=True))
        await asyncio.gather(*(self._embed_into(list(t), list(p), result) for t, p in parts))

    async def _send(self, texts: list[str], exclude: frozenset[str]) -> EndpointReply:
        """The vectors of ``texts`` from some endpoint not in ``exclude``.

        The endpoints' faults are retried elsewhere up to the outage bound, then
        :class:`FleetUnavailableError`; the request's own faults are raised as they are, and
        a fault one input may have caused as :class:`_NarrowInstead`.
        """
        avoid: set[str] = set(exclude)
        retrying = AsyncRetrying(
            retry=retry_if_exception(_worth_retrying),
            wait=wait_exponential_jitter(
                multiplier=self.settings.retry.initial_backoff_s,
                jitter=self.settings.retry.initial_backoff_s,
                max=self.settings.retry.max_backoff_s,
            ),
            stop=stop_after_delay(self.settings.retry.outage_timeout_s),
            before_sleep=self._before_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    endpoint, ticket = await self._acquire(len(texts), avoid, exclude)
                    avoid.add(endpoint.name)
                    return await self._ask(endpoint, ticket, texts)
        except EndpointError as exc:
            if exc.means.retried:
                raise FleetUnavailableError(
                    "no embedding endpoint could embed a request for "
                    f"{self.settings.retry.outage_timeout_s:.0f}s (--outage-timeout); last: {exc}"
                ) from exc
            raise
        raise AssertionError("unreachable: tenacity returns or reraises")

    async def _ask(
        self, endpoint: Endpoint, ticket: tuple[float, int], texts: list[str]
    ) -> EndpointReply:
        alone = endpoint.inflight_requests == 1
        try:
            embedded = await endpoint.client.embed(texts, self.settings.options)
            self._check_dimension(endpoint, embedded)
        except EndpointError as exc:
            await self._release(endpoint, ticket)
            if exc.means.narrows_first:
                probe_fault = await self._probe_fault(endpoint)
                if probe_fault is None:  # the endpoint is well: one of these inputs did it
                    self._telemetry.request_failed(endpoint.name, exc.kind)
                    log.info(
                        "endpoint %s answered %s for %d input(s) and the probe text well: "
                        "narrowing down to the input at fault",
                        endpoint.name,
                        exc.kind,
                        len(texts),
                    )
                    raise _NarrowInstead(exc) from exc
                await self._record_failure(endpoint, exc)
                await self._record_failure(endpoint, probe_fault)
                raise
            await self._record_failure(endpoint, exc)
            raise
        except BaseException:
            await self._release(endpoint, ticket)
            raise
        await self._release(endpoint, ticket)
        await self._record_success(endpoint, len(texts), embedded, alone=alone)
        return embedded

    async def _probe_fault(self, endpoint: Endpoint) -> EndpointError | None:
        """What is wrong with ``endpoint``'s answer for the probe text, or None when it is the
        vector of the start: the endpoint answers well, whatever it answered another request."""
        try:
            probe = await endpoint.client.embed([PROBE_TEXT], self.settings.options)
            self._check_dimension(endpoint, probe)
            self._check_vector(endpoint, probe.vectors[0])
        except EndpointError as exc:
            return exc
        return None

    def _check_dimension(self, endpoint: Endpoint, embedded: EndpointReply) -> None:
        if embedded.vectors.shape[1] != self.dimension:
            raise EndpointError(
                f"bad answer: vectors of dimension {embedded.vectors.shape[1]}, "
                f"the fleet's is {self.dimension}",
                endpoint=endpoint.name,
                kind=FaultKind.WRONG_DIMENSION,
            )

    def _before_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, EndpointError):
            self._telemetry.retried(exc.kind)
        log.debug("retrying after %s (attempt %d)", exc, state.attempt_number)

    # --- routing ---------------------------------------------------------------------------

    async def _acquire(
        self, inputs: int, avoid: set[str], exclude: frozenset[str]
    ) -> tuple[Endpoint, tuple[float, int]]:
        waiting_since: float | None = None  # for an endpoint outside ``exclude`` to come back
        async with self._changed:
            while True:
                now = time.monotonic()
                endpoint = choose_endpoint(self._endpoints, inputs, avoid, now, exclude)
                if endpoint is not None:
                    ticket = (now, inputs)
                    endpoint.sent.append(ticket)
                    self._gauge_inflight(endpoint)
                    return endpoint, ticket
                self._check_outage()
                if exclude and not any(e.up and e.name not in exclude for e in self._endpoints):
                    waiting_since = now if waiting_since is None else waiting_since
                    self._check_confirmer_outage(exclude, now - waiting_since)
                else:
                    waiting_since = None
                # Wake when an answer or a new limit changes things, or when the pacing of
                # an endpoint within its limit (or its Retry-After) lets the next request go.
                timeout = self.settings.probe_interval_s
                for held in (e for e in self._endpoints if e.up):
                    if held.paused_until > now:
                        timeout = min(timeout, held.paused_until - now + 0.001)
                    elif held.under_limit(inputs):
                        held.limit.paced()
                        timeout = min(timeout, held.wait_s(now) + 0.001)
                    else:
                        held.limit.held_back()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=timeout)

    def _check_outage(self) -> None:
        if any(e.up for e in self._endpoints):
            return
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        elif now - self._down_since > self.settings.retry.outage_timeout_s:
            raise FleetUnavailableError(
                f"no embedding endpoint has been healthy for {now - self._down_since:.0f}s"
            )

    def _check_confirmer_outage(self, exclude: frozenset[str], waited_s: float) -> None:
        """A refused input waits for another endpoint to confirm it, up to the outage bound."""
        if waited_s > self.settings.retry.outage_timeout_s:
            raise FleetUnavailableError(
                f"no embedding endpoint other than {', '.join(sorted(exclude))} has been in "
                f"rotation for {waited_s:.0f}s (--outage-timeout) to confirm a refused input"
            )

    async def _release(self, endpoint: Endpoint, ticket: tuple[float, int]) -> None:
        async with self._changed:
            endpoint.sent.remove(ticket)
            endpoint.answered_at = time.monotonic()
            self._gauge_inflight(endpoint)
            self._changed.notify_all()

    async def _record_success(
        self, endpoint: Endpoint, inputs: int, embedded: EndpointReply, *, alone: bool
    ) -> None:
        endpoint.consecutive_faults = 0
        self._telemetry.request_ok(endpoint.name, inputs, embedded.seconds, embedded.tokens)
        now = time.monotonic()
        if endpoint.limit.answered(embedded.seconds, inputs, alone=alone, now=now):
            await self._limit_changed(endpoint)

    async def _limit_changed(self, endpoint: Endpoint) -> None:
        self._gauge_limit(endpoint)
        async with self._changed:
            self._changed.notify_all()

    async def _record_failure(self, endpoint: Endpoint, exc: EndpointError) -> None:
        means = exc.means
        self._telemetry.request_failed(endpoint.name, exc.kind)
        if exc.retry_after_s:
            endpoint.paused_until = max(
                endpoint.paused_until, time.monotonic() + min(exc.retry_after_s, 600.0)
            )
        if means.shrinks_limit and endpoint.limit.overloaded(time.monotonic()):
            log.info(
                "endpoint %s answered %s: its limit is now %d inputs",
                endpoint.name,
                exc.kind,
                endpoint.input_limit,
            )
            await self._limit_changed(endpoint)
        if not means.counts_against_endpoint:
            return
        endpoint.consecutive_faults += 1
        if endpoint.up and (
            means.ejects_at_once or endpoint.consecutive_faults >= self.settings.eject_after
        ):
            log.warning("endpoint %s ejected after %s: %s", endpoint.name, exc.kind, exc.reason)
            self._telemetry.ejected(endpoint.name, exc.kind)
            async with self._changed:
                self._set_up(endpoint, False)

    def _set_up(self, endpoint: Endpoint, up: bool) -> None:
        endpoint.up = up
        if up:
            endpoint.consecutive_faults = 0
            self._down_since = None
        self._telemetry.endpoint_up.labels(endpoint.name).set(1 if up else 0)

    def _gauge_limit(self, endpoint: Endpoint) -> None:
        self._telemetry.concurrency_limit.labels(endpoint.name).set(endpoint.input_limit)
        if isinstance(endpoint.limit, AdaptiveInflightLimit):
            self._telemetry.queue_share.labels(endpoint.name).set(endpoint.limit.queue_share)

    def _gauge_inflight(self, endpoint: Endpoint) -> None:
        self._telemetry.inflight_requests.labels(endpoint.name).set(endpoint.inflight_requests)
        self._telemetry.inflight_inputs.labels(endpoint.name).set(endpoint.inflight_inputs)

    # --- health ----------------------------------------------------------------------------

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.probe_interval_s)
            for endpoint in [e for e in self._endpoints if not e.up]:
                await self._probe(endpoint)

    async def _probe(self, endpoint: Endpoint) -> None:
        """Re-admit an endpoint that answers /health, only if its /info reports the model and
        settings of the start and it embeds the probe text as the fleet did then."""
        if not await endpoint.client.healthy():
            return
        try:
            info = await endpoint.client.info()
            self._check_identity(endpoint, info)
            probe = await endpoint.client.embed([PROBE_TEXT], self.settings.options)
            self._check_dimension(endpoint, probe)
            self._check_vector(endpoint, probe.vectors[0])
        except ConfigurationError as exc:  # our credentials refused: nothing to retry with
            self._keep_out(endpoint, None, exc)
            return
        except EndpointError as exc:
            self._telemetry.refused(endpoint.name, exc.kind)
            self._keep_out(endpoint, exc.kind, exc)
            return
        async with self._changed:
            try:
                self._admit(endpoint, info)
            except ConfigurationError as exc:  # another kind of server, with other options
                self._telemetry.refused(endpoint.name, FaultKind.WRONG_MODEL)
                self._keep_out(endpoint, FaultKind.WRONG_MODEL, exc)
                return
            endpoint.refused = None
            log.info("endpoint %s is back in rotation", endpoint.name)
            self._changed.notify_all()

    def _keep_out(self, endpoint: Endpoint, kind: FaultKind | None, exc: Exception) -> None:
        if endpoint.refused != kind or kind is None:  # once per reason, not at every probe
            why = kind or "configuration"
            log.error("endpoint %s stays out of rotation (%s): %s", endpoint.name, why, exc)
        endpoint.refused = kind

    def _check_identity(self, endpoint: Endpoint, info: ServerInfo) -> None:
        differences = self.info.identity.differences(self._with_revision(info).identity)
        if differences:
            raise EndpointError(
                f"/info differs from the start in {'; '.join(differences)}",
                endpoint=endpoint.name,
                kind=FaultKind.WRONG_MODEL,
            )

    def _check_vector(self, endpoint: Endpoint, vector: np.ndarray) -> None:
        assert self._reference is not None
        if not same_vector(vector, self._reference):
            raise EndpointError(
                "its vector for the probe text differs from the one at start "
                "(other model files behind the same /info?)",
                endpoint=endpoint.name,
                kind=FaultKind.WRONG_MODEL,
            )


def choose_endpoint(
    endpoints: Sequence[Endpoint],
    inputs: int,
    avoid: set[str],
    now: float,
    exclude: frozenset[str] = frozenset(),
) -> Endpoint | None:
    """The healthy endpoint with room for ``inputs`` and the fewest requests in flight,
    preferring one this request has not failed on yet and never one in ``exclude``; None when
    none has room."""
    ready = [e for e in endpoints if e.up and e.name not in exclude and e.has_room(inputs, now)]
    if not ready:
        return None
    fresh = [e for e in ready if e.name not in avoid]
    return min(fresh or ready, key=lambda e: (e.inflight_requests, e.inflight_inputs))


class _NarrowInstead(Exception):
    """An endpoint answered a fault that one input can cause (``narrows_first``) and embeds the
    probe text well: the request is divided, or its single input confirmed elsewhere, rather
    than retried whole."""

    def __init__(self, fault: EndpointError) -> None:
        super().__init__(str(fault))
        self.fault = fault


def _failure_reason(fault: EndpointError, refusal: EndpointError | None) -> str:
    """Why a single input failed for good: what each endpoint that refused it answered."""
    if refusal is None:  # a one-endpoint fleet: its isolated refusal is the confirmation
        return f"{fault.kind}: {fault.reason}"
    return (
        f"{fault.kind}: {fault.reason} (from {fault.endpoint}); "
        f"{refusal.kind}: {refusal.reason} (from {refusal.endpoint})"
    )


def _worth_retrying(exc: BaseException) -> bool:
    return isinstance(exc, EndpointError) and exc.means.retried

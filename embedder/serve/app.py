"""The HTTP face of ``embedder serve``: TEI's routes, bodies, errors and status codes, and
TEI's OpenAI route (``/v1/embeddings``, ``/embeddings``) with float or base64 vectors."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from embedder import __version__
from embedder.fleet import openai_protocol
from embedder.fleet import tei_protocol as tei
from embedder.fleet.protocol import EmbedOptions
from embedder.serve.backends import Backend, Tokens, normalized
from embedder.serve.scheduler import BackendFailed, BatchStats, Overloaded, Scheduler, Timing


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """TEI's flags, with TEI's defaults."""

    max_concurrent_requests: int = 512
    max_batch_tokens: int = 16384
    max_batch_requests: int | None = None
    max_client_batch_size: int = 32
    auto_truncate: bool = True
    payload_limit: int = tei.DEFAULT_PAYLOAD_LIMIT
    api_key: str | None = None
    served_model_name: str | None = None


class ApiError(Exception):
    def __init__(self, error_type: tei.ErrorType, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


class _PlainError(Exception):
    """Errors TEI's HTTP layer answers in plain text (payload too large, unparseable JSON)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Gone(Exception):
    """The client disconnected before its answer was ready."""


class _TeiCounters:
    """Counters under TEI's exact names: TEI's exporter writes ``te_request_success``, while
    prometheus_client's Counter would write ``te_request_success_total``, and dashboards built
    for TEI would miss it."""

    def __init__(self, registry: CollectorRegistry, help_by_name: dict[str, str]) -> None:
        self._help = help_by_name
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        registry.register(self)

    def inc(self, name: str, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self._values[key] = self._values.get(key, 0.0) + 1.0

    def collect(self) -> Iterator[Metric]:
        for name, text in self._help.items():
            metric = Metric(name, text, "counter")
            for (sample, labels), value in self._values.items():
                if sample == name:
                    metric.add_sample(name, dict(labels), value)
            yield metric


class _ServerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.counters = _TeiCounters(
            r,
            {
                "te_request_count": "Requests received.",
                "te_request_success": "Successful requests.",
                "te_request_failure": "Failed requests.",
                "te_embed_count": "Inputs embedded.",
            },
        )
        self.queue_size = Gauge("te_queue_size", "Inputs waiting for a batch.", registry=r)
        self.duration = Histogram("te_request_duration", "Request duration (s).", registry=r)
        self.queue_duration = Histogram(
            "te_request_queue_duration", "Queue time of batches (s).", registry=r
        )
        self.inference_duration = Histogram(
            "te_request_inference_duration", "Batch inference (s).", registry=r
        )
        self.batch_size = Histogram(
            "te_batch_next_size",
            "Inputs per model batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.batch_tokens = Histogram(
            "te_batch_next_tokens",
            "Tokens per model batch.",
            buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768),
            registry=r,
        )

    def on_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.size)
        self.batch_tokens.observe(stats.tokens)
        self.queue_duration.observe(stats.queue_s)
        self.inference_duration.observe(stats.inference_s)
        for _ in range(stats.size):
            self.counters.inc("te_embed_count")


class TeiServer:
    def __init__(self, backend: Backend, settings: ServerSettings) -> None:
        self.backend = backend
        self.settings = settings
        self.metrics = _ServerMetrics()
        self.scheduler = Scheduler(
            backend,
            max_concurrent_requests=settings.max_concurrent_requests,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_requests=settings.max_batch_requests,
            on_batch=self.metrics.on_batch,
        )

    def info(self) -> tei.Info:
        b, s = self.backend, self.settings
        return tei.Info(
            model_id=b.model_id,
            model_sha=b.model_sha,
            model_dtype=b.dtype,
            model_type={"embedding": {"pooling": b.pooling}},
            max_concurrent_requests=s.max_concurrent_requests,
            max_input_length=b.max_input_length,
            max_batch_tokens=s.max_batch_tokens,
            max_batch_requests=s.max_batch_requests,
            max_client_batch_size=s.max_client_batch_size,
            auto_truncate=s.auto_truncate,
            tokenization_workers=1,
            version=f"{__version__}+embedder-serve",
            served_model_name=s.served_model_name or b.model_id,
        )

    def app(self) -> Starlette:
        routes = [
            Route(tei.EMBED_ROUTE, self._embed, methods=["POST"]),
            *(
                Route(path, self._openai, methods=["POST"])
                for path in openai_protocol.EMBEDDINGS_ROUTES
            ),
            Route("/tokenize", self._tokenize, methods=["POST"]),
            Route("/info", self._info, methods=["GET"]),
            Route("/health", self._health, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
        ]
        app = Starlette(routes=routes, lifespan=self._lifespan)
        if self.settings.api_key:
            app.add_middleware(_RequireApiKey, api_key=self.settings.api_key)
        return app

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self.scheduler.start()
        try:
            yield
        finally:
            await self.scheduler.stop()

    # --- routes ------------------------------------------------------------------------------

    async def _embed(self, request: Request) -> Response:
        async def answer() -> Response:
            started = time.perf_counter()
            embed = tei.decode_embed_request(await self._body(request))
            vectors, done = await self._infer(request, embed.inputs, embed.options)
            return self._ok(tei.encode_embed_response(vectors), started, done, embed.inputs)

        self.metrics.counters.inc("te_request_count", method="embed")
        return await self._answering(answer, openai=False)

    async def _openai(self, request: Request) -> Response:
        async def answer() -> Response:
            started = time.perf_counter()
            body = openai_protocol.decode_request(await self._body(request))
            options = EmbedOptions(normalize=True, dimensions=body.dimensions)
            vectors, done = await self._infer(request, body.inputs, options)
            payload = openai_protocol.encode_response(
                vectors,
                model=self.info().served_model_name or "",
                encoding_format=body.encoding_format,
                prompt_tokens=done.tokens,
            )
            return self._ok(payload, started, done, body.inputs)

        self.metrics.counters.inc("te_request_count", method="openai")
        return await self._answering(answer, openai=True)

    async def _tokenize(self, request: Request) -> Response:
        async def answer() -> Response:
            texts, add_special = tei.decode_tokenize_request(await self._body(request))
            if not texts:
                raise ApiError(
                    tei.ErrorType.EMPTY, "Input validation error: `inputs` cannot be empty"
                )
            encoded = await asyncio.to_thread(self.backend.tokenize, texts)
            tokens = [
                [
                    {
                        "id": i,
                        "text": t,
                        "special": s,
                        "start": None if s else o[0],
                        "stop": None if s else o[1],
                    }
                    for i, t, o, s in zip(tok.ids, tok.texts, tok.offsets, tok.special, strict=True)
                    if add_special or not s
                ]
                for tok in encoded
            ]
            return Response(orjson.dumps(tokens), media_type="application/json")

        return await self._answering(answer, openai=False)

    async def _answering(
        self, answer: Callable[[], Awaitable[Response]], *, openai: bool
    ) -> Response:
        """Run a route's work and turn failures into TEI's answers for them."""
        try:
            return await answer()
        except ApiError as exc:
            return self._error(exc, openai=openai)
        except _PlainError as exc:
            return PlainTextResponse(str(exc), exc.status)
        except tei.ProtocolError as exc:
            return PlainTextResponse(
                f"Failed to deserialize the JSON body into the target type: {exc}", 422
            )
        except _Gone:
            return Response(status_code=499)  # nobody is listening; the status is for logs only

    async def _info(self, _request: Request) -> Response:
        return Response(orjson.dumps(self.info().to_json()), media_type="application/json")

    async def _health(self, _request: Request) -> Response:
        return Response(status_code=200)

    async def _metrics(self, _request: Request) -> Response:
        self.metrics.queue_size.set(self.scheduler.queued)
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # --- the work --------------------------------------------------------------------------

    async def _infer(
        self, request: Request, texts: list[str], options: EmbedOptions
    ) -> tuple[np.ndarray, _Done]:
        if not texts:
            raise ApiError(tei.ErrorType.EMPTY, "Input validation error: `inputs` cannot be empty")
        limit = self.settings.max_client_batch_size
        if len(texts) > limit:
            raise ApiError(tei.ErrorType.VALIDATION, tei.batch_size_message(len(texts), limit))
        if options.prompt_name is not None:
            raise ApiError(
                tei.ErrorType.VALIDATION,
                f"Input validation error: prompt `{options.prompt_name}` is not available",
            )
        try:
            permits = self.scheduler.admit(len(texts))
        except Overloaded:
            raise ApiError(tei.ErrorType.OVERLOADED, "Model is overloaded") from None
        with permits:
            tokenizing = time.perf_counter()
            tokens = await asyncio.to_thread(self.backend.tokenize, texts)
            tokenized = time.perf_counter() - tokenizing
            ids = self._fit(tokens, options)
            try:
                vectors, timing = await _unless_disconnected(request, self.scheduler.embed(ids))
            except BackendFailed as exc:
                raise ApiError(tei.ErrorType.BACKEND, str(exc)) from exc
        vectors = self._shape(vectors, options)
        return vectors, _Done(sum(len(i) for i in ids), tokenized, timing)

    def _fit(self, tokens: list[Tokens], options: EmbedOptions) -> list[list[int]]:
        limit = self.backend.max_input_length
        truncate = self.settings.auto_truncate if options.truncate is None else options.truncate
        fitted = []
        for encoded in tokens:
            tok = encoded
            if len(tok) > limit:
                if not truncate:
                    raise ApiError(
                        tei.ErrorType.VALIDATION,
                        f"Input validation error: `inputs` must have less than {limit} tokens. Given: {len(tok)}",
                    )
                tok = tok.truncated(limit, options.truncation_direction)
            fitted.append(tok.ids)
        return fitted

    def _shape(self, vectors: np.ndarray, options: EmbedOptions) -> np.ndarray:
        if options.dimensions is not None:
            if not 0 < options.dimensions <= vectors.shape[1]:
                raise ApiError(
                    tei.ErrorType.VALIDATION,
                    f"Input validation error: `dimensions` must be between 1 and {vectors.shape[1]}",
                )
            vectors = vectors[:, : options.dimensions]
        return normalized(vectors) if options.normalize else vectors

    # --- plumbing ----------------------------------------------------------------------------

    async def _body(self, request: Request) -> bytes:
        limit = self.settings.payload_limit
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise _PlainError(413, "Failed to buffer the request body: length limit exceeded")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _PlainError(
                        413, "Failed to buffer the request body: length limit exceeded"
                    )
                chunks.append(chunk)
        except ClientDisconnect as exc:
            raise _Gone from exc
        raw = b"".join(chunks)
        try:
            orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _PlainError(400, f"Failed to parse the request body as JSON: {exc}") from exc
        return raw

    def _error(self, exc: ApiError, *, openai: bool) -> Response:
        self.metrics.counters.inc("te_request_failure", err=str(exc.error_type).lower())
        body = (
            openai_protocol.encode_error(exc.error_type, exc.message)
            if openai
            else tei.encode_error(exc.error_type, exc.message)
        )
        return Response(body, status_code=exc.error_type.status, media_type="application/json")

    def _ok(self, payload: bytes, started: float, done: _Done, texts: list[str]) -> Response:
        total_ms = (time.perf_counter() - started) * 1000
        self.metrics.counters.inc("te_request_success", method="embed")
        self.metrics.duration.observe(total_ms / 1000)
        headers = {
            tei.HEADER_COMPUTE_TOKENS: str(done.tokens),
            tei.HEADER_COMPUTE_CHARACTERS: str(sum(len(t) for t in texts)),
            tei.HEADER_COMPUTE_TIME: f"{total_ms:.0f}",
            tei.HEADER_TOTAL_TIME: f"{total_ms:.0f}",
            tei.HEADER_TOKENIZATION_TIME: f"{done.tokenization_s * 1000:.0f}",
            tei.HEADER_QUEUE_TIME: f"{done.timing.queue_s * 1000:.0f}",
            tei.HEADER_INFERENCE_TIME: f"{done.timing.inference_s * 1000:.0f}",
        }
        return Response(payload, media_type="application/json", headers=headers)


@dataclass(frozen=True, slots=True)
class _Done:
    """What an answered request took: its tokens, and TEI's timing headers' figures."""

    tokens: int
    tokenization_s: float
    timing: Timing


class _RequireApiKey:
    """TEI's --api-key: every route but /health and /metrics needs the bearer key; else a bare 401."""

    _OPEN = frozenset({"/health", "/metrics"})

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self._OPEN:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-length", b"0")],
                    }
                )
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)


async def _unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Await ``work`` unless the client disconnects first; then cancel it (freeing its inputs)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise _Gone


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return

"""A TEI-compatible test server that injects faults: ``python -m tests.support.fault_tei --port 0``.

It is ``embedder serve``'s app with the hash backend, behind an ASGI layer that misbehaves
on demand. Tests steer it over HTTP: ``POST /_faults`` sets the faults (JSON below),
``GET /_stats`` counts what reached it (and the most inputs it held at once;
``?texts=1`` adds every distinct text), ``POST /_reset`` clears both (a server shared by the
tests of a module starts each test as new). Faults apply to ``/embed`` only.

    {"fail_every": 2, "fail_status": 429}   every 2nd request answered with that TEI error
    {"hang": true}                          accept and never answer
    {"hold": true}                          keep each request until the faults are set without
                                            "hold", then answer it as those faults say
    {"delay_s": 0.5}                        answer late
    {"garbage": "nan" | "count" | "dim" | "json" | "truncated"}
    {"reject_containing": "POISON"}         422 Validation for any batch holding that text
    {"nan_containing": "POISON"}            NaN vectors for any batch holding that text (an
                                            input that overflows the model, e.g. in fp16)
    {"unhealthy": true}                     /health answers 503
    {"after": 1, ...}                       the first request (a client's start-up probe) is spared
    {"info": {"model_id": "other/model"}}   /info reports these fields instead (model_sha,
                                            model_type's pooling, model_dtype...)
    {"model_seed": 7}                       /embed answers as the hash model of that seed: another
                                            model of the same dimension (its /info unchanged
                                            unless "info" says otherwise)

Error answers are TEI's: ``{"error", "error_type"}`` with its status codes; 424 is TEI's
``Backend`` error (the forward pass failed, e.g. CUDA out of memory).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedder.fleet import tei_protocol as tei
from embedder.serve.app import ServerSettings, TeiServer
from embedder.serve.backends import HashBackend, normalized
from embedder.serve.main import serve

_ERRORS = {
    429: (tei.ErrorType.OVERLOADED, "Model is overloaded"),
    503: (tei.ErrorType.UNHEALTHY, "unhealthy"),
    # TEI's wording: "Backend error: " + the backend's own message.
    424: (tei.ErrorType.BACKEND, "Backend error: CUDA_ERROR_OUT_OF_MEMORY: out of memory"),
}


@dataclass
class Faults:
    fail_every: int = 0
    fail_status: int = 429
    hang: bool = False
    hold: bool = False
    delay_s: float = 0.0
    garbage: str | None = None
    reject_containing: str | None = None
    nan_containing: str | None = None  # NaN vectors for any batch holding that text
    unhealthy: bool = False
    after: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    model_seed: int | None = None


@dataclass
class Stats:
    requests: int = 0
    inputs: int = 0
    faults_injected: int = 0
    held: int = 0
    inflight_inputs: int = 0
    max_inflight_inputs: int = 0
    texts: collections.Counter[str] = field(default_factory=collections.Counter)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "inputs": self.inputs,
            "faults_injected": self.faults_injected,
            "held": self.held,
            "distinct_texts": len(self.texts),
            "max_repeats": max(self.texts.values(), default=0),
            "max_inflight_inputs": self.max_inflight_inputs,
        }


class FaultInjector:
    def __init__(self, app: ASGIApp, faults: Faults, dimension: int) -> None:
        self.app = app
        self.faults = faults
        self.stats = Stats()
        self._dimension = dimension
        self._released = asyncio.Event()  # set while requests are not held
        self._released.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path not in (
            "/embed",
            "/_faults",
            "/_reset",
            "/_stats",
            "/health",
            "/info",
        ):
            await self.app(scope, receive, send)
            return
        if path == "/info" and self.faults.info:
            await self._info(scope, receive, send)
            return
        if path == "/info":
            await self.app(scope, receive, send)
            return
        if path == "/_stats":
            answer = self.stats.to_json()
            if b"texts=1" in scope.get("query_string", b""):
                answer["texts"] = sorted(self.stats.texts)
            await _answer(send, 200, orjson.dumps(answer))
            return
        body = await _read(receive)
        if path == "/_reset":
            self.faults, self.stats = Faults(), Stats()
            self._released.set()
            await _answer(send, 200, b"{}")
            return
        if path == "/_faults":
            self.faults = Faults(**orjson.loads(body or b"{}"))
            if self.faults.hold:
                self._released.clear()
            else:
                self._released.set()
            await _answer(send, 200, b"{}")
            return
        if path == "/health":
            if self.faults.unhealthy:
                await _answer(send, 503, tei.encode_error(tei.ErrorType.UNHEALTHY, "unhealthy"))
            else:
                await self.app(scope, _replay(body, receive), send)
            return
        await self._embed(scope, body, receive, send)

    async def _embed(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        self.stats.requests += 1
        f = self.faults if self.stats.requests > self.faults.after else Faults()
        try:
            inputs = tei.decode_embed_request(body).inputs
        except tei.ProtocolError:
            inputs = []
        if f.hang:
            await asyncio.Event().wait()
        if f.hold:
            self.stats.held += 1
            await self._released.wait()
            self.stats.held -= 1
            f = self.faults
        if f.delay_s:
            await asyncio.sleep(f.delay_s)
        if f.fail_every and self.stats.requests % f.fail_every == 0:
            self.stats.faults_injected += 1
            if f.fail_status in _ERRORS:
                kind, message = _ERRORS[f.fail_status]
                await _answer(send, f.fail_status, tei.encode_error(kind, message))
            else:
                await _answer(send, f.fail_status, b"Internal Server Error", "text/plain")
            return
        if f.reject_containing and any(f.reject_containing in text for text in inputs):
            self.stats.faults_injected += 1
            await _answer(
                send,
                422,
                tei.encode_error(tei.ErrorType.VALIDATION, "Input validation error: poisoned"),
            )
            return
        if f.nan_containing and any(f.nan_containing in text for text in inputs):
            self.stats.faults_injected += 1
            await self._garbage("nan", len(inputs), send)
            return
        self.stats.inputs += len(inputs)
        self.stats.texts.update(inputs)
        if f.garbage:
            self.stats.faults_injected += 1
            await self._garbage(f.garbage, len(inputs), send)
            return
        if f.model_seed is not None:
            await _answer(send, 200, self._as_model(f.model_seed, body))
            return
        self.stats.inflight_inputs += len(inputs)
        self.stats.max_inflight_inputs = max(
            self.stats.max_inflight_inputs, self.stats.inflight_inputs
        )
        try:
            await self.app(scope, _replay(body, receive), send)
        finally:
            self.stats.inflight_inputs -= len(inputs)

    async def _info(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The server's own /info with the fields of ``info`` replaced."""
        captured: list[Message] = []

        async def capture(message: Message) -> None:
            captured.append(message)

        await self.app(scope, receive, capture)
        body = b"".join(m.get("body", b"") for m in captured if m["type"] == "http.response.body")
        await _answer(send, 200, orjson.dumps({**orjson.loads(body), **self.faults.info}))

    def _as_model(self, seed: int, body: bytes) -> bytes:
        """What the hash model of ``seed`` answers (auto-truncating, as the server does)."""
        request = tei.decode_embed_request(body)
        backend = HashBackend(self._dimension, seed=seed)
        limit, direction = backend.max_input_length, request.options.truncation_direction
        ids = [t.truncated(limit, direction).ids for t in backend.tokenize(request.inputs)]
        vectors = backend.embed(ids)
        return tei.encode_embed_response(
            normalized(vectors) if request.options.normalize else vectors
        )

    async def _garbage(self, kind: str, count: int, send: Send) -> None:
        if kind == "json":
            await _answer(send, 200, b"<html>not json</html>", "text/html")
        elif kind == "nan":
            await _answer(send, 200, b"[" + b",".join([b"[NaN,1.0]"] * count) + b"]")
        elif kind == "count":
            await _answer(send, 200, orjson.dumps([[0.0] * 8] * max(0, count - 1)))
        elif kind == "dim":
            await _answer(send, 200, orjson.dumps([[1.0] * 3] * count))
        elif kind == "truncated":
            payload = orjson.dumps([[0.5] * 8] * count)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                    ],
                }
            )
            await send(
                {
                    "type": "http.response.body",
                    "body": payload[: len(payload) // 2],
                    "more_body": True,
                }
            )
            raise ConnectionAbortedError("truncated on purpose")


async def _read(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(send: Send, status: int, body: bytes, media: str = "application/json") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", media.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dimension", type=int, default=64)
    parser.add_argument("--max-client-batch-size", type=int, default=32)
    parser.add_argument("--max-concurrent-requests", type=int, default=512)
    parser.add_argument(
        "--model-seed", type=int, default=0, help="another seed serves 'another model'"
    )
    parser.add_argument("--faults", default="{}", help="initial faults as JSON")
    parser.add_argument("--batch-seconds", type=float, default=0.0, help="model time per batch")
    parser.add_argument("--token-seconds", type=float, default=0.0, help="model time per token")
    args = parser.parse_args()
    backend = HashBackend(
        args.dimension,
        seed=args.model_seed,
        seconds_per_batch=args.batch_seconds,
        seconds_per_token=args.token_seconds,
    )
    server = TeiServer(
        backend,
        ServerSettings(
            max_client_batch_size=args.max_client_batch_size,
            max_concurrent_requests=args.max_concurrent_requests,
        ),
    )
    faults = Faults(**orjson.loads(args.faults))
    serve(
        server, "127.0.0.1", args.port, wrap=lambda app: FaultInjector(app, faults, args.dimension)
    )


if __name__ == "__main__":
    main()

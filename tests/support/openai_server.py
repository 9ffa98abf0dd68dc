"""A vLLM- or Infinity-like test server: ``python -m tests.support.openai_server --port 0``.

It speaks the OpenAI embeddings API as the real server of its ``--flavour`` does (routes,
model listing, error bodies and status codes: see embedder/fleet/openai_protocol.py for the
sources), with the hash model of ``embedder serve`` behind it, so its vectors are those of a
``fault_tei`` of the same dimension and seed: the two can form one fleet.

* ``vllm``: ``/v1/models`` (``owned_by: "vllm"``, ``root``, ``max_model_len``), ``/version``,
  ``/health``, ``/v1/embeddings``. No admission control: every request queues, and requests
  are served one at a time (``--seconds-per-input`` each input), as one GPU would. An input
  longer than ``max_model_len`` tokens is vLLM's 400 unless ``truncate_prompt_tokens`` asks to
  cut it.
* ``openai``: a hosted API at ``/v1``: ``/v1/models`` lists two models (``owned_by:
  "system"``), no ``/health``, every route needs ``Authorization: Bearer <--api-key>``.
* ``infinity``: ``/models`` (``owned_by: "infinity"``), ``/health``, ``/embeddings``; more
  inputs than ``--max-client-batch-size`` is FastAPI's 422; it always truncates.

Tests steer it like ``fault_tei``: ``POST /_faults`` with ``{"fail_every": N, "fail_status":
429, "retry_after": "1"}``, ``GET /_stats`` (requests, inputs, faults injected, the most inputs
queued at once, 429s answered), ``POST /_reset``.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from starlette.types import Receive, Scope, Send

from embedder.fleet import openai_protocol
from embedder.serve.backends import HashBackend, normalized
from tests.support.bare_asgi import answer, request_body, serve


@dataclass
class Faults:
    fail_every: int = 0
    fail_status: int = 429
    retry_after: str | None = None
    after: int = 0  # the first requests (the client's start-up probes) are spared


@dataclass
class Stats:
    requests: int = 0
    inputs: int = 0
    faults_injected: int = 0
    queued_inputs: int = 0
    max_queued_inputs: int = 0
    early: int = 0  # requests that came before a Retry-After we sent had passed
    texts: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "inputs": self.inputs,
            "faults_injected": self.faults_injected,
            "max_queued_inputs": self.max_queued_inputs,
            "early": self.early,
            "distinct_texts": len(self.texts),
        }


class OpenAIServer:
    def __init__(
        self,
        flavour: str,
        backend: HashBackend,
        *,
        seconds_per_input: float = 0.0,
        max_client_batch_size: int = 2048,
        api_key: str | None = None,
    ) -> None:
        self.flavour = flavour
        self.backend = backend
        self.faults = Faults()
        self.stats = Stats()
        self._seconds_per_input = seconds_per_input
        self._max_batch = max_client_batch_size
        self._not_before = 0.0  # loop time before which a client was told not to come back
        self._gpu = asyncio.Lock()  # one batch at a time, as one GPU; everything else queues
        self._authorization = f"Bearer {api_key}".encode() if api_key else None
        prefix = "" if flavour == "infinity" else "/v1"
        self._routes = {
            prefix + "/models": self._models,
            prefix + "/embeddings": self._embeddings,
            "/health": self._health,
            "/version": self._version,
            "/_faults": self._set_faults,
            "/_stats": self._stats,
            "/_reset": self._reset,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await request_body(scope, receive, send)
        if body is None:
            return
        path = scope["path"]
        given = dict(scope["headers"]).get(b"authorization")
        if self._authorization and not path.startswith("/_") and given != self._authorization:
            message = "Incorrect API key provided"
            await answer(send, 401, self._error(message, "invalid_request_error", 401))
            return
        route = self._routes.get(path)
        hosted_lacks = self.flavour == "openai" and path == "/health"
        if route is None or hosted_lacks or (path == "/version" and self.flavour != "vllm"):
            await answer(send, 404, orjson.dumps({"detail": "Not Found"}))
            return
        status, payload, headers = await route(body)
        await answer(send, status, payload, headers)

    # --- the API ------------------------------------------------------------------------------

    async def _models(self, _body: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        b = self.backend
        if self.flavour == "vllm":
            card = {
                "id": "served-hash",
                "object": "model",
                "created": 0,
                "owned_by": "vllm",
                "root": b.model_id,
                "parent": None,
                "max_model_len": b.max_input_length,
                "permission": [],
            }
        elif self.flavour == "openai":
            cards = [
                {"id": name, "object": "model", "created": 0, "owned_by": "system"}
                for name in (b.model_id, "another-embedding-model")
            ]
            return 200, orjson.dumps({"object": "list", "data": cards}), []
        else:
            card = {
                "id": b.model_id,
                "object": "model",
                "owned_by": "infinity",
                "created": 0,
                "backend": "torch",
                "stats": {"batch_size": 32, "queue_fraction": 0.0},
                "capabilities": ["embed"],
            }
        return 200, orjson.dumps({"object": "list", "data": [card]}), []

    async def _embeddings(self, body: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        self.stats.requests += 1
        now = asyncio.get_running_loop().time()
        if now < self._not_before:
            self.stats.early += 1
        request = orjson.loads(body)
        inputs = request["input"] if isinstance(request["input"], list) else [request["input"]]
        f = self.faults
        if (
            f.fail_every
            and self.stats.requests > f.after
            and self.stats.requests % f.fail_every == 0
        ):
            self.stats.faults_injected += 1
            headers = []
            if f.retry_after:
                headers = [(b"retry-after", f.retry_after.encode())]
                self._not_before = now + float(f.retry_after)
            if f.fail_status == 429:
                message, kind = f"model {self.backend.model_id} is currently overloaded", None
            else:
                message, kind = (
                    "InternalServerError: CUDA error: out of memory",
                    "InternalServerError",
                )
            return f.fail_status, self._error(message, kind, f.fail_status), headers
        if self.flavour == "infinity" and len(inputs) > self._max_batch:
            detail = [
                {
                    "type": "too_long",
                    "loc": ["body", "input"],
                    "msg": f"List should have at most {self._max_batch} items after "
                    f"validation, not {len(inputs)}",
                }
            ]
            return 422, orjson.dumps({"detail": detail}), []
        tokens = self.backend.tokenize(list(inputs))
        limit = self.backend.max_input_length
        cut = self.flavour == "infinity" or request.get("truncate_prompt_tokens") == -1
        longest = max((len(t) for t in tokens), default=0)
        if longest > limit and not cut:
            message = (
                f"This model's maximum context length is {limit} tokens. However, you "
                f"requested {longest} tokens in the input for embedding generation. Please "
                "reduce the length of the input."
            )
            return 400, self._error(message, "BadRequestError", 400), []
        ids = [t.truncated(limit, "Right").ids for t in tokens]
        self.stats.queued_inputs += len(inputs)
        self.stats.max_queued_inputs = max(self.stats.max_queued_inputs, self.stats.queued_inputs)
        try:
            async with self._gpu:
                if self._seconds_per_input:
                    await asyncio.sleep(self._seconds_per_input * len(inputs))
                vectors = normalized(self.backend.embed(ids))
        finally:
            self.stats.queued_inputs -= len(inputs)
        self.stats.inputs += len(inputs)
        self.stats.texts.update(inputs)
        dimensions = request.get("dimensions")
        if dimensions:
            vectors = normalized(vectors[:, :dimensions])
        return 200, self._answer(vectors, request, sum(len(i) for i in ids)), []

    def _answer(self, vectors: np.ndarray, request: dict[str, Any], tokens: int) -> bytes:
        return openai_protocol.encode_response(
            vectors,
            model=str(request.get("model") or self.backend.model_id),
            encoding_format=str(request.get("encoding_format", "float")),
            prompt_tokens=tokens,
        )

    def _error(self, message: str, error_type: str | None, code: int) -> bytes:
        if self.flavour == "vllm":  # vLLM 0.6-0.10's flat ErrorResponse
            body = {"object": "error", "message": message, "type": error_type, "param": None}
            return orjson.dumps({**body, "code": code})
        return openai_protocol.encode_nested_error(message, error_type=error_type, code=code)

    async def _health(self, _body: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        return 200, b"", []

    async def _version(self, _body: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        return 200, orjson.dumps({"version": "0.10.1"}), []

    # --- steering -----------------------------------------------------------------------------

    async def _set_faults(self, body: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        self.faults = Faults(**orjson.loads(body or b"{}"))
        return 200, b"{}", []

    async def _stats(self, _body: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        return 200, orjson.dumps(self.stats.to_json()), []

    async def _reset(self, _body: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        self.faults, self.stats, self._not_before = Faults(), Stats(), 0.0
        return 200, b"{}", []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--flavour", choices=("vllm", "infinity", "openai"), default="vllm")
    parser.add_argument("--api-key")
    parser.add_argument("--dimension", type=int, default=64)
    parser.add_argument("--model-seed", type=int, default=0)
    parser.add_argument("--max-input-length", type=int, default=512)
    parser.add_argument("--seconds-per-input", type=float, default=0.0)
    parser.add_argument("--max-client-batch-size", type=int, default=2048)
    args = parser.parse_args()
    backend = HashBackend(args.dimension, args.max_input_length, seed=args.model_seed)
    app = OpenAIServer(
        args.flavour,
        backend,
        seconds_per_input=args.seconds_per_input,
        max_client_batch_size=args.max_client_batch_size,
        api_key=args.api_key,
    )
    serve(app, args.port, f"{args.flavour} test server")


if __name__ == "__main__":
    main()

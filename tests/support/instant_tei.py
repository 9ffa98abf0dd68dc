"""An instant TEI-compatible server: precomputed vectors, no model at all.

``python -m tests.support.instant_tei --port 0 --dimension 768`` prints its address. It answers
``/info``, ``/health``, ``/embed`` (JSON floats, with ``x-compute-tokens``) and TEI's OpenAI
route ``/v1/embeddings`` (base64 vectors), so the client side of the pipeline is the only thing
measured. A bare ASGI app under uvicorn keeps its own cost low.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import orjson

from embedder.fleet import openai_protocol
from embedder.fleet import tei_protocol as tei
from tests.support.bare_asgi import answer, request_body, serve

Scope = dict[str, Any]


class InstantTei:
    def __init__(self, dimension: int, max_batch: int) -> None:
        rng = np.random.default_rng(7)
        vector = rng.standard_normal(dimension).astype(np.float32)
        self._vector = vector / np.linalg.norm(vector)
        self._row = orjson.dumps(self._vector, option=orjson.OPT_SERIALIZE_NUMPY)
        # One body per batch size and format, made at its first use: serving costs a lookup.
        self._bodies: dict[tuple[str, int], bytes] = {}
        self._info = orjson.dumps(
            tei.Info(
                model_id="bench/instant",
                model_sha="0" * 40,
                model_dtype="float32",
                model_type={"embedding": {"pooling": "mean"}},
                max_concurrent_requests=4096,
                max_input_length=512,
                max_batch_tokens=1 << 20,
                max_batch_requests=None,
                max_client_batch_size=max_batch,
                auto_truncate=True,
                tokenization_workers=1,
                version="bench",
            ).to_json()
        )

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        body = await request_body(scope, receive, send)
        if body is None:
            return
        path = scope["path"]
        if path in ("/embed", "/v1/embeddings"):
            request = orjson.loads(body)
            inputs = request["inputs" if path == "/embed" else "input"]
            texts = [inputs] if isinstance(inputs, str) else inputs
            tokens = sum(len(t) // 4 + 2 for t in texts)
            reply = self._body("json" if path == "/embed" else "base64", len(texts))
            await answer(send, 200, reply, [(b"x-compute-tokens", str(tokens).encode())])
        elif path == "/info":
            await answer(send, 200, self._info, [])
        else:
            await answer(send, 200, b"", [])

    def _body(self, form: str, count: int) -> bytes:
        body = self._bodies.get((form, count))
        if body is None:
            if form == "json":
                body = b"[" + b",".join([self._row] * count) + b"]"
            else:
                body = openai_protocol.encode_response(
                    np.tile(self._vector, (count, 1)),
                    model="bench/instant",
                    encoding_format="base64",
                    prompt_tokens=count,
                )
            self._bodies[(form, count)] = body
        return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dimension", type=int, default=768)
    parser.add_argument("--max-batch", type=int, default=256)
    args = parser.parse_args()
    serve(InstantTei(args.dimension, args.max_batch), args.port, "instant tei")


if __name__ == "__main__":
    main()

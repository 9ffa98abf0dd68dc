"""An instant TEI-compatible server: precomputed vectors in TEI's JSON, no model at all.

``python -m tests.support.instant_tei --port 0 --dimension 768`` prints its address. It answers
``/info``, ``/health`` and ``/embed`` (with ``x-compute-tokens``), so the client side of the
pipeline is the only thing measured. A bare ASGI app under uvicorn keeps its own cost low.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import orjson

from embedder.fleet import tei_protocol as tei
from embedder.serve.main import bind

Scope = dict[str, Any]


class InstantTei:
    def __init__(self, dimension: int, max_batch: int) -> None:
        rng = np.random.default_rng(7)
        vector = rng.standard_normal(dimension).astype(np.float32)
        vector /= np.linalg.norm(vector)
        row = orjson.dumps(vector, option=orjson.OPT_SERIALIZE_NUMPY)
        # One precomputed body per batch size: serving costs a dict lookup.
        self._bodies = {n: b"[" + b",".join([row] * n) + b"]" for n in range(1, max_batch + 1)}
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
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if path == "/embed":
            inputs = orjson.loads(body)["inputs"]
            count = 1 if isinstance(inputs, str) else len(inputs)
            tokens = sum(len(t) // 4 + 2 for t in ([inputs] if isinstance(inputs, str) else inputs))
            await _send(
                send, 200, self._bodies[count], [(b"x-compute-tokens", str(tokens).encode())]
            )
        elif path == "/info":
            await _send(send, 200, self._info, [])
        else:
            await _send(send, 200, b"", [])


async def _send(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dimension", type=int, default=768)
    parser.add_argument("--max-batch", type=int, default=256)
    args = parser.parse_args()
    sock = bind("127.0.0.1", args.port)
    print(f"instant tei listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        InstantTei(args.dimension, args.max_batch), log_level="warning", access_log=False
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()

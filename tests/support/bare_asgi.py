"""The plumbing of the tests' bare ASGI servers (``instant_tei``, ``openai_server``): a bare
app under uvicorn keeps a server's own cost low, so what is measured is the client."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from embedder.serve.main import bind

Receive = Any
Send = Any
Scope = MutableMapping[str, Any]


async def request_body(scope: Scope, receive: Receive, send: Send) -> bytes | None:
    """The request's whole body; None for a lifespan scope, which this answers itself."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return None
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def answer(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve(app: Any, port: int, name: str) -> None:
    """Listen on loopback, say so in the line the tests wait for, and serve until killed."""
    import uvicorn

    sock = bind("127.0.0.1", port)
    print(f"{name} listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])

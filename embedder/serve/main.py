"""Running ``embedder serve`` under uvicorn, on a socket bound before start-up."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from embedder.serve.app import ServerSettings, TeiServer
from embedder.serve.backends import Backend, HashBackend, OnnxMiniLM


def make_backend(
    name: str,
    *,
    dimension: int = 384,
    seconds_per_batch: float = 0.0,
    seconds_per_token: float = 0.0,
    model_file: Path | None = None,
    tokenizer_file: Path | None = None,
    threads: int = 0,
    model_dir: Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> Backend:
    if name == "hash":
        return HashBackend(
            dimension, seconds_per_batch=seconds_per_batch, seconds_per_token=seconds_per_token
        )
    if name == "onnx":
        return OnnxMiniLM(model_file, tokenizer_file, threads)
    if name == "torch":
        if model_dir is None:
            raise ValueError(
                "the torch backend needs --model-dir (a sentence-transformers model directory)"
            )
        try:
            from embedder.serve.torch_backend import SentenceTransformersBackend
        except ImportError as exc:
            raise ValueError("the torch backend needs `pip install embedder[torch]`") from exc
        return SentenceTransformersBackend(model_dir, device=device, dtype=dtype)
    raise ValueError(f"unknown backend {name!r}")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(
    server: TeiServer,
    host: str,
    port: int,
    *,
    wrap: Callable[[ASGIApp], ASGIApp] | None = None,
    announce: bool = True,
) -> None:
    """Serve until SIGTERM/SIGINT; uvicorn stops accepting, then lets in-flight requests finish.

    ``wrap`` puts ASGI middleware around the app (the fault-injecting test server uses it).
    """
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    app: ASGIApp = server.app()
    if wrap is not None:
        app = wrap(app)
    config = uvicorn.Config(
        app, log_level="warning", timeout_graceful_shutdown=30, access_log=False, lifespan="on"
    )
    if announce:
        # Scripts and tests read this line to learn the port (useful with --port 0).
        print(
            f"embedder serve: {server.backend.model_id} listening on http://{host}:{bound_port}",
            file=sys.stdout,
            flush=True,
        )
    uvicorn.Server(config).run(sockets=[sock])


__all__ = ["ServerSettings", "TeiServer", "make_backend", "serve"]

"""Running ``embedder serve`` under uvicorn, on a socket bound before start-up."""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
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
        from embedder.serve.torch_backend import SentenceTransformersBackend

        try:  # before any other check: without them nothing else matters
            import sentence_transformers  # noqa: F401
            import torch  # noqa: F401
        except ImportError as exc:
            raise ValueError(
                f"--backend torch needs PyTorch and sentence-transformers ({exc.name} is not "
                "installed); install the torch extra: pip install 'embedder[torch]'"
            ) from None
        if model_dir is None:
            raise ValueError(
                "--backend torch needs --model-dir (a sentence-transformers model directory)"
            )
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
    server_ = _Server(config)
    with server_.capture_signals():  # before the line: a stop may follow it at once
        if announce:
            # Scripts and tests read this line to learn the port (useful with --port 0).
            print(
                f"embedder serve: {server.backend.model_id} listening on http://{host}:{bound_port}",
                file=sys.stdout,
                flush=True,
            )
        server_.run(sockets=[sock])
    if announce:
        print("embedder serve: stopped", file=sys.stderr, flush=True)


class _Server(uvicorn.Server):
    """uvicorn's server, stopping on SIGTERM/SIGINT as ``dev-mongo`` does: finish, exit 0.

    uvicorn raises the signal again once shut down, so the process would end killed by it
    (exit 143, or a KeyboardInterrupt traceback); a requested stop is a normal end here. The
    handlers go in before the server announces itself (``serve``), and stay while it runs.
    """

    _held = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if self._held or threading.current_thread() is not threading.main_thread():
            yield
            return
        stops = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
        self._held = True
        try:
            yield
        finally:
            self._held = False
            for sig, handler in previous.items():
                signal.signal(sig, handler)


__all__ = ["ServerSettings", "TeiServer", "make_backend", "serve"]

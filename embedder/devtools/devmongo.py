"""An embedded MongoDB-compatible server (mongoeco) for the demo and the tests.

It speaks MongoDB's wire protocol, so the real pymongo client talks to it over a socket.
It needs Python 3.13+ and the ``demo`` extra; production runs use a real MongoDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path


async def run(
    host: str,
    port: int,
    sqlite_path: Path | None,
    user: str | None = None,
    password: str | None = None,
) -> None:
    try:
        from mongoeco.wire import AsyncMongoEcoProxyServer
    except ImportError as exc:  # pragma: no cover - depends on the interpreter
        raise SystemExit(
            "the embedded MongoDB needs Python 3.13+ and `pip install embedder[demo]`"
        ) from exc
    if sqlite_path is None:
        from mongoeco.engines.memory import MemoryEngine

        engine: object = MemoryEngine()
    else:
        from mongoeco.engines.sqlite import SQLiteEngine

        sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        engine = SQLiteEngine(str(sqlite_path))
    users: tuple[object, ...] = ()
    if user:
        from mongoeco.wire import WireAuthUser

        users = (WireAuthUser(user, password, mechanisms=("SCRAM-SHA-256",)),)
    server = AsyncMongoEcoProxyServer(engine=engine, host=host, port=port, auth_users=users)
    address = await server.start()
    print(f"embedder dev-mongo: listening on mongodb://{address.host}:{address.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.close(), timeout=5)
    print("embedder dev-mongo: stopped", file=sys.stderr, flush=True)

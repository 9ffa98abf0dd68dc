"""Which MongoDB the tests use, and an embedded one that a test may stop and restart.

Set ``EMBEDDER_TEST_MONGODB_URI`` to run every MongoDB test against a real MongoDB; without it
the tests run on mongoeco (``tests.support.strict_mongo``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.support.servers import Process, free_port, start

REAL_MONGO = os.environ.get("EMBEDDER_TEST_MONGODB_URI")

needs_own_mongo = pytest.mark.skipif(
    bool(REAL_MONGO),
    reason="stops and restarts its own MongoDB (mongoeco); a shared server cannot be",
)


class RestartableMongo:
    """An embedded MongoDB on a fixed port, with data on disk so it survives a restart."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self._root = root
        self.process: Process | None = None

    @property
    def uri(self) -> str:
        # A short server-selection timeout: the worker notices an outage within a second.
        return f"mongodb://127.0.0.1:{self.port}/?serverSelectionTimeoutMS=1000"

    def start(self) -> None:
        args = [
            "-m",
            "embedder.cli",
            "dev-mongo",
            "--port",
            str(self.port),
            "--sqlite",
            str(self._root / "db.sqlite"),
        ]
        self.process = start(args, self._root / f"mongo-{time.monotonic_ns()}.log")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

"""Simulated GPUs for benchmarks: ``embedder serve --backend hash`` with a service time per
batch (TEI's permits, FIFO queue and token-budget batches are the server's own)."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.servers import Process, start

BATCH_SECONDS = 0.005
TOKEN_SECONDS = 0.00017  # a 32-tweet request (~450 tokens) takes ~80 ms on a speed-1 server


def start_fleet(
    speeds: Sequence[float],
    logs: Path,
    dimension: int = 64,
    *,
    batch_seconds: float = BATCH_SECONDS,
    token_seconds: float = TOKEN_SECONDS,
) -> list[Process]:
    """One server per speed (1.0 = the reference GPU, 0.5 = half as fast)."""
    return [
        start(
            [
                *("-m", "embedder.cli", "serve", "--backend", "hash"),
                *("--dimension", str(dimension), "--port", "0"),
                *("--simulate-batch-seconds", str(batch_seconds / speed)),
                *("--simulate-token-seconds", str(token_seconds / speed)),
            ],
            logs / f"server{number}.log",
        )
        for number, speed in enumerate(speeds)
    ]


@contextlib.contextmanager
def running_fleet(
    speeds: Sequence[float],
    logs: Path,
    dimension: int = 64,
    *,
    batch_seconds: float = BATCH_SECONDS,
    token_seconds: float = TOKEN_SECONDS,
) -> Iterator[list[str]]:
    """The servers' URLs while they run; all stopped afterwards."""
    servers = start_fleet(
        speeds, logs, dimension, batch_seconds=batch_seconds, token_seconds=token_seconds
    )
    try:
        yield [s.address for s in servers]
    finally:
        for server in servers:
            server.stop()


def machine() -> str:
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )

"""Starting real servers as subprocesses on loopback, and driving them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from embedder.devtools.processes import start_server

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Process:
    proc: subprocess.Popen[str]
    address: str
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start(args: Sequence[str], log: Path, *, ready_timeout: float = 60) -> Process:
    """Start ``python <args>`` and wait for its 'listening on ADDRESS' line."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc, address = start_server(args, log, cwd=ROOT, env=env, ready_timeout=ready_timeout)
    return Process(proc, address, log)


@dataclass
class FaultTei:
    """A handle on a running ``tests.support.fault_tei`` server."""

    process: Process

    @property
    def url(self) -> str:
        return self.process.address

    def set_faults(self, **faults: Any) -> None:
        httpx.post(self.url + "/_faults", json=faults, timeout=5).raise_for_status()

    def reset(self) -> None:
        """No faults and no counts, as if just started."""
        httpx.post(self.url + "/_reset", timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(self.url + "/_stats", timeout=5).json()
        return answer

    def texts(self) -> set[str]:
        """Every distinct text that reached the server."""
        answer = httpx.get(self.url + "/_stats", params={"texts": "1"}, timeout=5).json()
        return set(answer["texts"])


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_python(args: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python <args>`` from the repository root to completion; the caller checks the code."""
    return subprocess.run(
        [sys.executable, *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )

"""Starting a server as a child process and waiting until it listens: the demo's and the
tests' one way to do it. Every server of ours (``embedder serve``, ``embedder dev-mongo``, the
tests' fault servers) prints ``listening on ADDRESS`` once it accepts connections."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

_ADDRESS = re.compile(r"listening on (\S+)")


def start_server(
    args: Sequence[str],
    log: Path,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    new_session: bool = False,
    ready_timeout: float = 60,
) -> tuple[subprocess.Popen[str], str]:
    """Run ``python <args>`` (its stderr to ``log``) and wait for the address it listens on.

    Raises RuntimeError, with the end of its log, when it exits or prints no address within
    ``ready_timeout`` seconds (checked between lines)."""
    handle = log.open("w")
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=handle,
        text=True,
        env=dict(env) if env is not None else None,
        start_new_session=new_session,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        match = _ADDRESS.search(line)
        if match:
            return process, match.group(1)
    process.kill()
    process.wait()
    raise RuntimeError(f"{list(args)} did not start (log {log}): {log.read_text()[-2000:]}")

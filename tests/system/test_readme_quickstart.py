"""The README's "Quick start on your machine", run as written from a clean directory.

The block between ``<!-- quickstart`` and ``<!-- /quickstart -->`` is read from README.md. Its
lines ending in ``&`` start the servers: each runs in the background, as the README says, and
the test waits for the ``listening on`` line the README tells the reader to wait for. The other
lines run in order in one shell, exactly as written, with the ``embedder`` command of this
checkout. The servers are stopped at the end, whatever happened.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from embedder.devtools.processes import start_server
from tests.support.servers import ROOT

BLOCK = re.compile(
    r"<!-- quickstart[^>]*-->\s*```sh\n(?P<body>.*?)```\s*<!-- /quickstart -->", re.S
)
# The servers the quick start starts, on their default ports.
PORTS = {"dev-mongo": 27017, "serve": 3000}


def quickstart() -> tuple[list[str], list[str]]:
    """The block's background commands (without their ``&``) and the rest, in order."""
    match = BLOCK.search((ROOT / "README.md").read_text(encoding="utf-8"))
    assert match, "README.md has no quick start block"
    background, foreground = [], []
    for line in match.group("body").splitlines():
        command = line.split("#", 1)[0].strip()
        if command.endswith("&"):
            background.append(command.removesuffix("&").strip())
        elif command:
            foreground.append(command)
    return background, foreground


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    background, foreground = quickstart()
    assert [c.split()[1] for c in background] == list(PORTS)
    assert foreground[-1].startswith("embedder verify")
    taken = [f"{name} ({port})" for name, port in PORTS.items() if port_taken(port)]
    if taken:
        pytest.skip(f"the quick start uses default ports, taken here: {', '.join(taken)}")
    # A clean directory and environment: the `embedder` of this checkout, nothing EMBEDDER_*.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "embedder").write_text(f'#!/bin/sh\nexec {sys.executable} -m embedder "$@"\n')
    (bin_dir / "embedder").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDDER_")}
    env |= {"PATH": f"{bin_dir}:{env['PATH']}", "PYTHONPATH": str(ROOT)}
    env |= {"PYTHONUNBUFFERED": "1"}
    work = tmp_path / "work"
    work.mkdir()
    servers: list[subprocess.Popen[str]] = []
    try:
        for number, command in enumerate(background):
            process, _ = start_server(
                ["-c", _shell(command)],
                tmp_path / f"server-{number}.log",
                cwd=work,
                env=env,
                new_session=True,
            )
            servers.append(process)
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", "\n".join(foreground)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        for process in servers:
            os.killpg(process.pid, signal.SIGTERM)
        for process in servers:
            process.wait(15)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "loaded 300 sample docs into twitter_data.tweets" in output
    assert "verify: OK" in done.stdout, output
    assert "output: 300 rows" in done.stdout
    assert str(work / "embeddings" / "consolidated") in done.stdout  # paths named absolute
    assert "Traceback" not in output


def _shell(command: str) -> str:
    """Python code running ``command`` through the shell, so ``start_server`` (which starts
    ``python <args>``) waits for its ``listening on`` line."""
    return f"import os; os.execvp('sh', ['sh', '-c', {command!r}])"

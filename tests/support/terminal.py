"""A program on a pseudo-terminal, as a person at a terminal runs it, and what the screen shows.

The program gets a pty of a fixed size as its controlling terminal (so ``isatty()`` is true and
Ctrl-C reaches it as the terminal's SIGINT); everything it writes is kept, and :func:`screen`
replays it as a terminal draws it, a row per line, so a test can see what a person sees.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Sequence
from pathlib import Path

ROWS, COLUMNS = 50, 200
_TAKE_TERMINAL = (
    "import fcntl, os, sys, termios; os.setsid(); fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)
_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    def __init__(
        self, args: Sequence[str], *, cwd: Path, env: dict[str, str], columns: int = COLUMNS
    ) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, columns, 0, 0))
        self._master = master
        self._output = bytearray()
        self._lock = threading.Lock()
        # A session of its own whose controlling terminal is the pty, made by the child itself
        # before it becomes the program (no preexec_fn: the test process runs threads).
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _TAKE_TERMINAL, *args],
            cwd=cwd,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
        )
        os.close(slave)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # the program closed the terminal (exited)
                return
            if not chunk:
                return
            with self._lock:
                self._output += chunk

    @property
    def text(self) -> str:
        """Everything written so far, escape sequences and carriage returns included."""
        with self._lock:
            return self._output.decode(errors="replace")

    def press_ctrl_c(self) -> None:
        """The terminal's interrupt character: the terminal sends SIGINT to the program."""
        os.write(self._master, b"\x03")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        os.close(self._master)


def screen(text: str) -> list[str]:
    """The rows a terminal shows for ``text``: a carriage return goes back to the row's
    start and what follows overwrites it; a line feed starts a new row. Colour and cursor
    escapes are dropped (the bar here is one line and never moves the cursor up)."""
    rows: list[list[str]] = [[]]
    column = 0
    for char in _ESCAPE.sub("", text):
        if char == "\r":
            column = 0
        elif char == "\n":
            rows.append([])
            column = 0
        else:
            row = rows[-1]
            if column < len(row):
                row[column] = char
            else:
                row.append(char)
            column += 1
    return ["".join(row).rstrip() for row in rows]

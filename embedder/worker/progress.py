"""Progress of a run: a bar with rate and ETA on a terminal, nothing extra elsewhere
(the worker's periodic log lines serve log files)."""

from __future__ import annotations

import sys
import time
from typing import Protocol

from tqdm import tqdm


class Progress(Protocol):
    def advance(self, done: int, failed: int, tokens: int) -> None: ...
    def close(self) -> None: ...


class Silent:
    def advance(self, done: int, failed: int, tokens: int) -> None:
        return None

    def close(self) -> None:
        return None


class Bar:
    """docs/s and ETA from tqdm; tokens/s and failures beside them."""

    def __init__(self, total: int, description: str = "embedding") -> None:
        self._bar = tqdm(
            total=total,
            desc=description,
            unit="doc",
            dynamic_ncols=True,
            smoothing=0.05,
            file=sys.stderr,
        )
        self._tokens = 0
        self._failed = 0
        self._started = time.monotonic()

    def advance(self, done: int, failed: int, tokens: int) -> None:
        self._tokens += tokens
        self._failed += failed
        elapsed = max(time.monotonic() - self._started, 1e-6)
        self._bar.set_postfix_str(
            f"{self._tokens / elapsed:,.0f} tok/s, {self._failed} failed", refresh=False
        )
        self._bar.update(done + failed)

    def close(self) -> None:
        self._bar.close()


def for_stream(total: int, *, enabled: bool | None = None) -> Progress:
    """A bar when stderr is a terminal (or when asked for), else nothing."""
    show = sys.stderr.isatty() if enabled is None else enabled
    return Bar(total) if show else Silent()

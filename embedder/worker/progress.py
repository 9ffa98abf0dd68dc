"""Progress of a run: a bar with rate and ETA on a terminal, nothing extra elsewhere
(the worker's periodic log lines serve log files).

Two figures, because a doc's vector comes back long before its shard is durable (up to
``--shard-age`` or ``--shard-rows`` later): the bar moves with docs embedded (vectors back),
so its rate and ETA move from the first batch, and names beside it how many of them are
durable and marked done.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Protocol

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


class Progress(Protocol):
    def embedded(self, docs: int, failed: int, tokens: int) -> None:
        """``docs`` got their vectors and ``failed`` failed for good; ``tokens`` more sent."""

    def marked(self, docs: int) -> None:
        """``docs`` are in a durable shard and marked done."""

    def close(self) -> None: ...


class Silent:
    def embedded(self, docs: int, failed: int, tokens: int) -> None:
        return None

    def marked(self, docs: int) -> None:
        return None

    def close(self) -> None:
        return None


class Bar:
    """Docs embedded (and failed) with their rate and ETA (tqdm's), and beside them docs
    durable, failures and tokens/s. While the bar is shown, log lines go above it (tqdm's
    logging redirect) rather than through it."""

    def __init__(self, total: int, description: str = "embedded") -> None:
        self._tokens = 0
        self._failed = 0
        self._marked = 0
        self._started = time.monotonic()
        self._bar = tqdm(
            total=total,
            desc=description,
            unit="doc",
            dynamic_ncols=True,
            smoothing=0.05,
            file=sys.stderr,
            postfix=self._figures(),  # drawn with the bar: one start, not two
        )
        self._logging = contextlib.ExitStack()
        self._logging.enter_context(logging_redirect_tqdm())

    def embedded(self, docs: int, failed: int, tokens: int) -> None:
        self._tokens += tokens
        self._failed += failed
        self._show_figures(refresh=False)
        self._bar.update(docs + failed)

    def marked(self, docs: int) -> None:
        self._marked += docs
        self._show_figures(refresh=True)

    def close(self) -> None:
        self._bar.close()
        self._logging.close()

    def _show_figures(self, *, refresh: bool) -> None:
        self._bar.set_postfix_str(self._figures(), refresh=refresh)

    def _figures(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        return (
            f"{self._marked:,} durable, {self._failed:,} failed, "
            f"{self._tokens / elapsed:,.0f} tok/s"
        )


def for_stream(total: int, *, enabled: bool | None = None) -> Progress:
    """A bar when stderr is a terminal (or when asked for), else nothing."""
    show = sys.stderr.isatty() if enabled is None else enabled
    return Bar(total) if show else Silent()


class Pace:
    """Docs embedded per second over the last interval, and the ETA it gives."""

    def __init__(self, now: float | None = None) -> None:
        self._last = 0
        self._last_at = time.monotonic() if now is None else now
        self.rate = 0.0

    def sample(self, embedded: int, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if now > self._last_at:
            self.rate = (embedded - self._last) / (now - self._last_at)
        self._last, self._last_at = embedded, now
        return self.rate

    def eta_s(self, remaining: int | None) -> float | None:
        """Seconds to embed ``remaining`` docs at the current rate; None when unknown."""
        if remaining is None or self.rate <= 0:
            return None
        return remaining / self.rate


def duration(seconds: float | None) -> str:
    """``1d 2h``, ``1h 05m``, ``3m 20s``, ``45s``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"

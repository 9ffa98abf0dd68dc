"""How many inputs each endpoint gets in flight: a fixed number, or one adapted to it.

TEI admits every input it has a permit for and queues it FIFO; beyond what keeps its GPU busy,
more inputs in flight only wait (the seed deployment's p95 of 22-60 s was that queue). The
adaptive limit keeps each endpoint near the smallest load that keeps it busy, from what its
answers show:

* **Unloaded level.** The fastest answer the endpoint gave to a request sent while nothing
  else of ours was in flight there, over the last ``baseline_horizon_s``. When no such answer
  is that recent, the limit drops to one request until one comes back (a shared endpoint's
  unloaded level moves with its other clients, so it is measured again, as TCP BBR does).
* **Queueing.** Every ``window`` answers, their median latency over the unloaded level says how
  much of it was waiting. Above ``shrink_above`` the limit loses one request's worth of
  inputs; below ``grow_below``, and only if the limit held requests back, it gains one (and
  doubles while still in slow start). A slow endpoint thus keeps the same short queue as a
  fast one and gets fewer docs; a recovered one grows back.
* **Overload.** A 429 (no free permit) or a timeout halves the limit at once.
* **Pacing.** Within the limit, the next request goes only when the server is predicted to
  have at most ``queue_share`` of a request's unloaded time left in front of it (the fleet
  predicts this from the send times of what is in flight): the GPU never idles between our
  requests, and no request waits longer than that share of a batch.

The limit never leaves ``[one request, ceiling]``; the ceiling is half the server's permits.
The class is pure (the caller passes the clock), so tests drive it directly.
"""

from __future__ import annotations

import collections
import statistics
from dataclasses import dataclass
from typing import Protocol

from embedder.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class AdaptiveSettings:
    grow_below: float = 1.5
    shrink_above: float = 2.0
    window: int = 8
    baseline_horizon_s: float = 30.0
    # How long, as a share of one request's unloaded time, a new request may be predicted to
    # wait at the server behind ours: enough that the server never idles between our
    # requests, little enough that nothing queues for long.
    queue_share: float = 0.5

    def __post_init__(self) -> None:
        if not 1.0 < self.grow_below < self.shrink_above or self.window < 1:
            raise ConfigurationError(f"invalid adaptive concurrency settings: {self}")


class Limit(Protocol):
    @property
    def value(self) -> int: ...
    @property
    def ceiling(self) -> int: ...

    def held_back(self) -> None: ...
    def pacing(self) -> tuple[float, float] | None: ...
    def answered(self, seconds: float, inputs: int, *, alone: bool, now: float) -> bool: ...
    def overloaded(self, now: float) -> bool: ...


class FixedLimit:
    """The same limit whatever the endpoint does."""

    def __init__(self, limit: int) -> None:
        self.value = max(1, limit)
        self.ceiling = self.value

    def held_back(self) -> None:
        return None

    def pacing(self) -> tuple[float, float] | None:
        return None

    def answered(self, seconds: float, inputs: int, *, alone: bool, now: float) -> bool:
        return False

    def overloaded(self, now: float) -> bool:
        return False


class AdaptiveLimit:
    def __init__(self, step: int, ceiling: int, settings: AdaptiveSettings | None = None) -> None:
        self.step = max(1, step)  # one full request
        self.ceiling = max(self.step, ceiling)
        self.settings = settings or AdaptiveSettings()
        self._limit = self.step
        self._slow_start = True
        self._window: list[float] = []
        self._held_back = False
        # (answered at, seconds) of requests that had the endpoint to themselves.
        self._alone: collections.deque[tuple[float, float]] = collections.deque()

    @property
    def value(self) -> int:
        if self._measuring:
            return self.step
        return self._limit

    @property
    def _measuring(self) -> bool:
        return not self._alone

    @property
    def baseline(self) -> float | None:
        return min(s for _, s in self._alone) if self._alone else None

    def held_back(self) -> None:
        """A request waited because this endpoint's limit was reached."""
        self._held_back = True

    def pacing(self) -> tuple[float, float] | None:
        """(seconds per input, seconds a new request may wait), from the unloaded level."""
        baseline = self.baseline
        if baseline is None:
            return None
        return baseline / self.step, baseline * self.settings.queue_share

    def answered(self, seconds: float, inputs: int, *, alone: bool, now: float) -> bool:
        """Take one successful answer into account; True when the limit changed."""
        before = self.value
        self._forget(now)
        if inputs * 2 < self.step:
            return False  # a stray small request says little about a full one
        if alone:
            self._alone.append((now, seconds))
        self._window.append(seconds)
        if len(self._window) >= max(self.settings.window, self._limit // self.step):
            self._decide()
        return self.value != before

    def overloaded(self, now: float) -> bool:
        before = self.value
        self._forget(now)
        self._limit = max(self.step, self._limit // 2)
        self._slow_start = False
        self._window.clear()
        return self.value != before

    def _forget(self, now: float) -> None:
        horizon = now - self.settings.baseline_horizon_s
        while self._alone and self._alone[0][0] < horizon:
            self._alone.popleft()

    def _decide(self) -> None:
        baseline = self.baseline
        latency = statistics.median(self._window)
        held_back = self._held_back
        self._window.clear()
        self._held_back = False
        if baseline is None or baseline <= 0:
            return
        queueing = latency / baseline
        if queueing > self.settings.shrink_above:
            self._limit = max(self.step, self._limit - self.step)
            self._slow_start = False
        elif queueing < self.settings.grow_below and held_back:
            grown = self._limit * 2 if self._slow_start else self._limit + self.step
            self._limit = min(self.ceiling, grown)

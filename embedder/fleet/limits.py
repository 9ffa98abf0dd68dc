"""How many inputs each endpoint gets in flight: a fixed number, or one adapted to it.

TEI admits every input it has a permit for and queues it FIFO; beyond what keeps its GPU busy,
more inputs in flight only wait (the seed deployment's p95 of 22-60 s was that queue). The
adaptive limit keeps each endpoint near the smallest load that keeps it busy, from what its
answers show:

* **Start.** One request until the unloaded level is known, then two (one in the model, one
  paced to follow it), doubling while answers stay fast and the limit holds requests back.
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
* **Queue depth.** Where TEI merges queued requests into bigger, faster batches (short texts
  on a large GPU), a deeper queue pays; latency cannot show it, throughput can. After
  ``first_probe_s`` of steady running, then every ``probe_interval_s`` or more, the queue
  share is probed (below).

The limit never leaves ``[one request, ceiling]``; the ceiling is half the server's permits.
The class is pure (the caller passes the clock), so tests drive it directly.
"""

from __future__ import annotations

import collections
import logging
import statistics
from dataclasses import dataclass, field
from typing import Protocol

from embedder.errors import ConfigurationError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AdaptiveSettings:
    grow_below: float = 1.5
    shrink_above: float = 2.0
    window: int = 8
    baseline_horizon_s: float = 30.0
    # How long, as a share of one request's unloaded time, a new request may be predicted to
    # wait at the server behind ours: enough that the server never idles between our
    # requests, little enough that nothing queues for long. Probing moves it (below).
    queue_share: float = 0.5
    max_queue_share: float = 16.0
    # Seconds of steady running before a probe; doubled after each probe that changed
    # nothing (up to ``max_probe_interval_s``), so a settled endpoint is rarely disturbed and
    # a long run's p95 never sees the probes. The first comes sooner: until then a new
    # endpoint runs at a depth nobody measured, and a short job would end before a minute.
    probe_interval_s: float = 60.0
    first_probe_s: float = 3.0
    max_probe_interval_s: float = 1800.0
    probe_windows: int = 2  # windows measured on each side of a probe
    # A deeper queue is kept only for this much more throughput: enough to stand out of the
    # noise of a few windows, little enough that a batch job does not leave 5-10% on the
    # table for a shorter queue on a server it has to itself.
    probe_gain: float = 0.05
    probe_loss: float = 0.03  # a shallower one is kept if it loses no more than this

    def __post_init__(self) -> None:
        if not 1.0 < self.grow_below < self.shrink_above or self.window < 1:
            raise ConfigurationError(f"invalid adaptive concurrency settings: {self}")


class InflightLimit(Protocol):
    """How many inputs one endpoint may have in flight now (not a request's size: that is
    ``embedder.worker.batching.BatchLimits``; nor httpx's connection ``Limits``)."""

    @property
    def value(self) -> int: ...
    @property
    def ceiling(self) -> int: ...

    @property
    def ramping(self) -> bool: ...

    def held_back(self) -> None: ...
    def paced(self) -> None: ...
    def pacing(self) -> tuple[float, float] | None: ...
    def answered(self, seconds: float, inputs: int, *, alone: bool, now: float) -> bool: ...
    def overloaded(self, now: float) -> bool: ...


class FixedInflightLimit:
    """The same number of inputs in flight whatever the endpoint does."""

    def __init__(self, limit: int) -> None:
        self.value = max(1, limit)
        self.ceiling = self.value

    def held_back(self) -> None:
        return None

    def paced(self) -> None:
        return None

    def pacing(self) -> tuple[float, float] | None:
        return None

    def answered(self, seconds: float, inputs: int, *, alone: bool, now: float) -> bool:
        return False

    def overloaded(self, now: float) -> bool:
        return False

    @property
    def ramping(self) -> bool:
        return False


class AdaptiveInflightLimit:
    def __init__(self, step: int, ceiling: int, settings: AdaptiveSettings | None = None) -> None:
        self.step = max(1, step)  # one full request
        self.ceiling = max(self.step, ceiling)
        self.settings = settings or AdaptiveSettings()
        # Two requests once the unloaded level is known: one in the model and one paced to
        # follow it, the least that keeps the server from idling between our requests (one
        # alone leaves it idle for every round trip). Slow start goes on from there.
        self._limit = min(self.ceiling, 2 * self.step)
        self._slow_start = True
        self._window: list[float] = []
        self._held_back = False
        self._wanted = False  # requests waited for this endpoint (its limit or its pacing)
        self._share = self.settings.queue_share
        # Delivered inputs per second, window by window: what probing compares.
        self._window_inputs = 0
        self._window_started: float | None = None
        self._steady: collections.deque[float] = collections.deque(
            maxlen=self.settings.probe_windows
        )
        self._probe: _Probe | None = None
        self._probe_interval = self.settings.first_probe_s
        self._next_probe_at: float | None = None  # set once the endpoint has settled
        self._probe_up = True
        # (answered at, seconds) of requests that had the endpoint to themselves.
        self._alone: collections.deque[tuple[float, float]] = collections.deque()

    @property
    def value(self) -> int:
        if self._measuring:
            return self.step
        return self._limit

    @property
    def ramping(self) -> bool:
        """Still finding its level: measuring the unloaded latency, or in slow start."""
        return self._measuring or self._slow_start

    @property
    def _measuring(self) -> bool:
        return not self._alone

    @property
    def baseline(self) -> float | None:
        return min(s for _, s in self._alone) if self._alone else None

    @property
    def queue_share(self) -> float:
        """The share in effect now (a probe's, while one runs)."""
        return self._share

    @property
    def settled_queue_share(self) -> float:
        """The share the endpoint runs at between probes."""
        return self._probe.share if self._probe is not None else self._share

    def held_back(self) -> None:
        """A request waited because this endpoint's limit was reached."""
        self._held_back = True
        self._wanted = True

    def paced(self) -> None:
        """A request waited because this endpoint's pacing held it."""
        self._wanted = True

    def pacing(self) -> tuple[float, float] | None:
        """(seconds per input, seconds a new request may wait), from the unloaded level."""
        baseline = self.baseline
        if baseline is None:
            return None
        return baseline / self.step, baseline * self._share

    def answered(self, seconds: float, inputs: int, *, alone: bool, now: float) -> bool:
        """Take one successful answer into account; True when the limit or the pacing
        changed."""
        before = (self.value, self._share)
        self._forget(now)
        if inputs * 2 < self.step:
            return False  # a stray small request says little about a full one
        if alone:
            self._alone.append((now, seconds))
        if self._window_started is None:
            self._window_started = now - seconds
        self._window.append(seconds)
        self._window_inputs += inputs
        if len(self._window) >= max(self.settings.window, self._limit // self.step):
            self._decide(now)
        return (self.value, self._share) != before

    def overloaded(self, now: float) -> bool:
        before = self.value
        self._forget(now)
        if self._probe is not None:
            self._share, self._limit = self._probe.share, self._probe.limit
            self._probe = None
        self._limit = max(self.step, self._limit // 2)
        self._share = self.settings.queue_share
        self._slow_start = False
        self._restart_window(now)
        self._steady.clear()
        return self.value != before

    def _restart_window(self, now: float | None) -> None:
        self._window.clear()
        self._window_inputs = 0
        self._window_started = now

    def _forget(self, now: float) -> None:
        horizon = now - self.settings.baseline_horizon_s
        while self._alone and self._alone[0][0] < horizon:
            self._alone.popleft()

    def _decide(self, now: float) -> None:
        baseline = self.baseline
        latency = statistics.median(self._window)
        held_back, wanted = self._held_back, self._wanted
        started = self._window_started if self._window_started is not None else now
        rate = self._window_inputs / max(now - started, 1e-6)
        self._restart_window(now)
        self._held_back = self._wanted = False
        if baseline is None or baseline <= 0:
            return
        if self._probe is not None:
            self._judge_probe(rate, now)
            return
        # The latency a request may see by design grows with the queue share.
        expected = (1 + self._share) / (1 + self.settings.queue_share)
        queueing = latency / baseline / expected
        if queueing > self.settings.shrink_above:
            self._limit = max(self.step, self._limit - self.step)
            self._slow_start = False
            self._steady.clear()
            return
        if queueing < self.settings.grow_below and held_back:
            grown = self._limit * 2 if self._slow_start else self._limit + self.step
            self._limit = min(self.ceiling, grown)
            self._steady.clear()
            return
        self._slow_start = False  # neither too slow nor held back by the limit: settled
        self._steady.append(rate)
        if self._next_probe_at is None:
            self._next_probe_at = now + self._probe_interval
        if wanted and now >= self._next_probe_at and self._ready_to_probe():
            self._start_probe(now)

    # --- probing the queue depth -----------------------------------------------------------
    # Latency alone cannot tell a deeper queue that TEI merges into bigger, more efficient
    # batches (short texts on a large GPU) from one that only waits. So now and then the
    # queue share is quadrupled (or halved) for a few windows and the delivered throughput
    # compared: deeper is kept only for a clear gain, shallower whenever it costs (almost)
    # nothing. Failed probes come ever more rarely, so a settled endpoint is rarely disturbed.

    def _ready_to_probe(self) -> bool:
        return len(self._steady) == self.settings.probe_windows and not self._slow_start

    def _start_probe(self, now: float) -> None:
        s = self.settings
        up = self._probe_up or self._share <= s.queue_share
        # Up by 4x: TEI merges queued requests only once two or more wait, so a doubling from
        # the start (half a request to one) could never show a gain.
        share = (
            min(s.max_queue_share, self._share * 4) if up else max(s.queue_share, self._share / 2)
        )
        if share == self._share:
            self._probe_up = not self._probe_up
            self._next_probe_at = now + self._probe_interval
            return
        self._probe = _Probe(self._share, self._limit, statistics.mean(self._steady), up)
        log.debug("probing queue share %.2f -> %.2f", self._share, share)
        self._share = share
        # Room for the deeper queue: one request in the model and ``share`` of one waiting.
        needed = self.step * (2 + int(share))
        self._limit = min(self.ceiling, max(self._limit, needed))

    def _judge_probe(self, rate: float, now: float) -> None:
        probe = self._probe
        assert probe is not None
        probe.rates.append(rate)
        if len(probe.rates) < self.settings.probe_windows:
            return
        measured = statistics.mean(probe.rates) / max(probe.before, 1e-9)
        s = self.settings
        kept = measured >= 1 + s.probe_gain if probe.up else measured >= 1 - s.probe_loss
        log.debug(
            "probe of queue share %.2f -> %.2f: throughput x%.2f, %s",
            probe.share,
            self._share,
            measured,
            "kept" if kept else "reverted",
        )
        if kept:  # look further the same way at once
            self._probe_interval = s.probe_interval_s
            self._next_probe_at = now
        else:
            self._share, self._limit = probe.share, probe.limit
            # From the first probe's short wait to the regular one, then doubling.
            self._probe_interval = min(
                max(self._probe_interval * 2, s.probe_interval_s), s.max_probe_interval_s
            )
            self._next_probe_at = now + self._probe_interval
            self._probe_up = not probe.up
        self._probe = None
        self._steady.clear()


@dataclass(slots=True)
class _Probe:
    share: float  # to return to
    limit: int
    before: float  # delivered inputs/s before the probe
    up: bool
    rates: list[float] = field(default_factory=list)

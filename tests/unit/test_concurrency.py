"""The adaptive limit on inputs in flight, driven directly (it is pure: the test owns the clock),
and the pacing it gives the fleet's routing."""

from __future__ import annotations

import httpx
import pytest

from embedder.errors import ConfigurationError
from embedder.fleet.endpoint import EndpointClient
from embedder.fleet.limits import AdaptiveInflightLimit, AdaptiveSettings, FixedInflightLimit
from embedder.fleet.routing import Endpoint

STEP = 32
SETTINGS = AdaptiveSettings(
    window=4, baseline_horizon_s=30.0, probe_interval_s=5.0, first_probe_s=5.0, probe_gain=0.10
)


def feed(
    limit: AdaptiveInflightLimit, seconds: float, count: int, now: float, *, held: bool
) -> float:
    """``count`` full answers of ``seconds`` each, none of them alone; returns the clock."""
    for _ in range(count):
        if held:
            limit.held_back()
        limit.answered(seconds, STEP, alone=False, now=now)
        now += 0.01
    return now


def test_starts_at_one_request_and_measures_the_unloaded_level_first() -> None:
    limit = AdaptiveInflightLimit(STEP, 256, SETTINGS)
    assert limit.value == STEP
    assert limit.pacing() is None
    assert limit.ramping
    limit.answered(0.1, STEP, alone=True, now=0.0)
    assert limit.baseline == 0.1
    # Then two requests, the second paced to follow the first: the server never idles
    # between them, as it would for the round trip of one request at a time.
    assert limit.value == 2 * STEP
    assert limit.ramping
    per_input, allowed = limit.pacing() or (0.0, 0.0)
    assert per_input == pytest.approx(0.1 / STEP)
    assert allowed == pytest.approx(0.05)


def test_grows_while_answers_stay_fast_and_the_limit_holds_requests_back() -> None:
    limit = AdaptiveInflightLimit(STEP, 256, SETTINGS)
    limit.answered(0.1, STEP, alone=True, now=0.0)  # the first answer of the first window
    now = feed(limit, 0.11, 3, 0.1, held=True)
    assert limit.value == 4 * STEP  # slow start doubles
    now = feed(limit, 0.11, 4, now, held=True)
    assert limit.value == 8 * STEP
    assert limit.ramping
    # Fast answers while the limit held nothing back say nothing about more load.
    feed(limit, 0.11, 8, now, held=False)
    assert limit.value == 8 * STEP
    assert not limit.ramping  # settled


def test_shrinks_when_answers_queue_and_never_below_one_request() -> None:
    limit = AdaptiveInflightLimit(STEP, 256, SETTINGS)
    limit.answered(0.1, STEP, alone=True, now=0.0)
    now = feed(limit, 0.1, 3, 0.1, held=True)
    now = feed(limit, 0.1, 4, now, held=True)
    assert limit.value == 8 * STEP
    # 2.5x the unloaded level: queueing (a window is one answer per request of the limit)
    now = feed(limit, 0.25, 8, now, held=True)
    assert limit.value == 7 * STEP
    for _ in range(10):
        now = feed(limit, 0.5, 4, now, held=True)
    assert limit.value == STEP
    # Out of slow start: it grows back one request at a time once answers are fast again
    # (the first window may still hold slow answers).
    now = feed(limit, 0.1, 4, now, held=True)
    now = feed(limit, 0.1, 4, now, held=True)
    assert limit.value == 2 * STEP


def test_overload_halves_at_once_and_the_ceiling_holds() -> None:
    limit = AdaptiveInflightLimit(STEP, 100, SETTINGS)
    limit.answered(0.1, STEP, alone=True, now=0.0)
    now = feed(limit, 0.1, 3, 0.1, held=True)
    for _ in range(4):
        now = feed(limit, 0.1, 4, now, held=True)
    assert limit.value == 100  # half the server's permits, not a multiple of the step
    assert limit.overloaded(now)
    assert limit.value == 50
    limit.overloaded(now)
    limit.overloaded(now)
    assert limit.value == STEP


def test_a_stale_unloaded_level_is_measured_again() -> None:
    limit = AdaptiveInflightLimit(STEP, 256, SETTINGS)
    limit.answered(0.1, STEP, alone=True, now=0.0)
    feed(limit, 0.1, 7, 0.1, held=True)
    assert limit.value == 8 * STEP
    # Past the horizon with no request alone: one request at a time until one comes back.
    limit.answered(0.1, STEP, alone=False, now=31.0)
    assert limit.value == STEP and limit.pacing() is None
    # The endpoint is now shared and slower: the new level is what counts.
    limit.answered(0.3, STEP, alone=True, now=31.5)
    assert limit.baseline == 0.3
    assert limit.value == 8 * STEP


def test_small_requests_do_not_move_the_unloaded_level() -> None:
    limit = AdaptiveInflightLimit(STEP, 256, SETTINGS)
    limit.answered(0.1, STEP, alone=True, now=0.0)
    limit.answered(0.01, 4, alone=True, now=0.1)
    assert limit.baseline == 0.1


def test_settings_refuse_a_band_that_cannot_settle() -> None:
    with pytest.raises(ConfigurationError, match="adaptive concurrency"):
        AdaptiveSettings(grow_below=2.0, shrink_above=1.5)


async def test_pacing_lets_the_next_request_go_just_before_the_server_frees_up() -> None:
    async with httpx.AsyncClient() as http:
        limit = AdaptiveInflightLimit(STEP, 256, SETTINGS)
        limit.answered(0.1, STEP, alone=True, now=0.0)
        feed(limit, 0.1, 3, 0.1, held=True)
        endpoint = Endpoint(EndpointClient("http://e", http), limit=limit, up=True)
        endpoint.sent.append((10.0, STEP))
        # Sent at 10.0, predicted done at 10.1; a new one may wait 0.05 s behind it.
        assert not endpoint.has_room(STEP, now=10.02)
        assert endpoint.wait_s(10.02) == pytest.approx(0.03)
        assert endpoint.has_room(STEP, now=10.05)
        # A second one in flight pushes the next slot one service time further.
        endpoint.sent.append((10.05, STEP))
        assert endpoint.wait_s(10.05) == pytest.approx(0.1)
        # A fixed limit does not pace.
        fixed = Endpoint(
            EndpointClient("http://f", http), limit=FixedInflightLimit(4 * STEP), up=True
        )
        fixed.sent.append((10.0, STEP))
        assert fixed.has_room(STEP, now=10.0)


def run_windows(
    limit: AdaptiveInflightLimit, windows: int, now: float, rate_at: dict[float, float]
) -> float:
    """Answers at the delivery rate (inputs/s) the current queue share gets, with the endpoint
    always wanted; latency at the unloaded level times (1 + share) / 1.5, as pacing allows."""
    for _ in range(windows * SETTINGS.window):
        share = limit.queue_share
        now += STEP / rate_at.get(share, rate_at[0.5])
        limit.paced()
        # Every 30 s the unloaded level is measured again: one request goes alone.
        alone = limit.pacing() is None
        limit.answered(0.1 if alone else 0.1 * (1 + share) / 1.5, STEP, alone=alone, now=now)
    return now


def settled(rates: dict[float, float]) -> tuple[AdaptiveInflightLimit, float]:
    limit = AdaptiveInflightLimit(STEP, 1024, SETTINGS)
    limit.answered(0.1, STEP, alone=True, now=0.0)
    return limit, run_windows(limit, 200, 0.0, rates)


def test_a_deeper_queue_is_kept_where_the_server_merges_it_into_faster_batches() -> None:
    # Short texts on a big GPU: throughput grows with what waits (TEI merges it).
    limit, _ = settled({0.5: 600.0, 2.0: 1100.0, 8.0: 1900.0})
    assert limit.settled_queue_share == 8.0


def test_a_deeper_queue_is_given_up_where_it_only_waits() -> None:
    # A saturated GPU: the same throughput whatever waits; the queue stays shallow, and the
    # failed probes come ever more rarely.
    limit, _ = settled({0.5: 1000.0, 2.0: 1010.0, 8.0: 1005.0})
    assert limit.settled_queue_share == 0.5
    assert limit._probe_interval > SETTINGS.probe_interval_s


def test_a_shallower_queue_is_taken_back_when_it_costs_nothing() -> None:
    # Merging helped once (share 2), then the load changed: 0.5 is as fast again.
    rates = {0.5: 600.0, 2.0: 1100.0, 8.0: 1100.0}
    limit, now = settled(rates)
    assert limit.settled_queue_share == 2.0
    rates[0.5] = 1100.0
    run_windows(limit, 2000, now, rates)
    assert limit.settled_queue_share == 0.5


def test_the_first_probe_comes_soon_after_the_endpoint_settles() -> None:
    # A job of a minute or less: waiting the regular interval, it would never learn that a
    # deeper queue delivers 8% more.
    settings = AdaptiveSettings(window=4, probe_interval_s=60.0, first_probe_s=2.0)
    limit = AdaptiveInflightLimit(STEP, 1024, settings)
    limit.answered(0.1, STEP, alone=True, now=0.0)
    now = run_windows(limit, 80, 0.0, {0.5: 1000.0, 2.0: 1080.0, 8.0: 1080.0})
    assert now < 10.0
    assert limit.settled_queue_share == 2.0
    # The next probe (deeper, which gains nothing) is reverted and the regular interval
    # follows, doubling: a settled endpoint is rarely disturbed.
    assert limit._probe_interval >= settings.probe_interval_s

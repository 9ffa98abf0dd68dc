"""The end of the queue: no endpoint idles while another still holds the job's last batches.

Once nothing is left to send, the last requests finish one by one, the slowest endpoint's
last; the others would idle meanwhile. From then on, whenever an endpoint has nothing in
flight, the batch in flight the longest (with one attempt only) is sent again (the fleet
routes it to the endpoint with the fewest requests: the idle one) and the first answer
counts; the other attempt is cancelled. A batch yields exactly one result, whichever
endpoint made it, so each doc's vector is written once: a hedge never duplicates a row.
Before the end of the queue nothing is hedged: every endpoint has queued work of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from embedder.fleet.routing import Fleet, FleetResult

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class _Flight:
    number: int  # in the order the batches were sent: the lowest has been in flight longest
    texts: Sequence[str]
    result: asyncio.Future[FleetResult]
    attempts: list[asyncio.Task[FleetResult]] = field(default_factory=list)


class TailHedging:
    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._flights: dict[int, _Flight] = {}
        self._numbers = itertools.count()
        self._at_the_end = False
        self.hedged = 0  # batches sent a second time
        self.won = 0  # ... whose second attempt answered first

    async def embed(self, texts: Sequence[str]) -> FleetResult:
        """The fleet's result for ``texts``, from the first attempt to answer."""
        flight = _Flight(next(self._numbers), texts, asyncio.get_running_loop().create_future())
        self._flights[flight.number] = flight
        self._attempt(flight)
        try:
            return await flight.result
        finally:
            del self._flights[flight.number]
            for attempt in flight.attempts:
                attempt.cancel()
            self._hedge()  # this batch's endpoint may now be idle

    def nothing_left(self) -> None:
        """Every batch of the job has been sent: hedge from now on."""
        if not self._at_the_end:
            self._at_the_end = True
            self._hedge()

    def _attempt(self, flight: _Flight) -> None:
        attempt = asyncio.create_task(self._fleet.embed(flight.texts), name="embed-attempt")
        flight.attempts.append(attempt)
        attempt.add_done_callback(lambda done: self._answered(flight, done))

    def _answered(self, flight: _Flight, attempt: asyncio.Task[FleetResult]) -> None:
        if flight.result.done() or attempt.cancelled():
            return
        failure = attempt.exception()
        if failure is None:
            if attempt is not flight.attempts[0]:
                self.won += 1
            flight.result.set_result(attempt.result())
        elif all(a.done() for a in flight.attempts):  # the other attempt may still answer
            flight.result.set_exception(failure)

    def _hedge(self) -> None:
        if not self._at_the_end or len(self._fleet.endpoints) < 2:
            return
        idle = self._fleet.idle_endpoints
        single = sorted(
            (f for f in self._flights.values() if len(f.attempts) == 1), key=lambda f: f.number
        )
        # One batch per idle endpoint; an attempt takes its endpoint only once it runs, so
        # the count is read once here, not after each attempt.
        for flight in single[:idle]:
            log.debug(
                "hedging batch %d (%d texts) on an idle endpoint", flight.number, len(flight.texts)
            )
            self.hedged += 1
            self._attempt(flight)

"""When a run reached each of its milestones, for telling where its time went.

A milestone is recorded once (the first time, or with ``last=True`` every time, keeping the
latest) as wall-clock seconds since the epoch, so another process (a benchmark that started
this one) can line it up with its own clock, together with how many docs the fleet had
answered by then. Waits on timers are tallied by name. Recording is a dict write: cheap
enough for every batch.

The milestones of a worker run, in order: ``started`` (the run's set-up begins),
``fleet_ready`` (``/info`` read, dimension probed), ``set_up`` (shards checked, vector cache
open, pending docs counted), ``worker_started``, ``first_sent`` (the first request handed to
the fleet), ``first_answered``, ``ramped`` (no endpoint's adaptive limit still in its slow
start), ``queue_empty`` (the last claim found nothing), ``last_sent``, ``last_answered``,
``last_marked`` (the last docs marked and their leases released), ``finished`` (the run
returns).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Phases:
    answered: int = 0  # docs the fleet has answered so far
    marks: dict[str, tuple[float, int]] = field(default_factory=dict)
    waits: dict[str, list[float]] = field(default_factory=dict)  # name -> [count, seconds]

    def reach(self, name: str, *, last: bool = False) -> None:
        if last or name not in self.marks:
            self.marks[name] = (time.time(), self.answered)
            if not last:
                log.debug("phase %s reached (%d docs answered)", name, self.answered)

    def waited(self, name: str, seconds: float) -> None:
        tally = self.waits.setdefault(name, [0, 0.0])
        tally[0] += 1
        tally[1] += seconds

    def as_dict(self) -> dict[str, object]:
        return {
            "marks": {
                name: {"at": round(at, 4), "answered": answered}
                for name, (at, answered) in self.marks.items()
            },
            "waits": {
                name: {"count": int(count), "seconds": round(seconds, 4)}
                for name, (count, seconds) in self.waits.items()
            },
        }

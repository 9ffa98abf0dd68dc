"""Deciding what a worker may claim: pure functions over a snapshot of the control document.

A lease covers the ``_id`` range [lo, hi] of the docs it was claimed with. A claim is the run
of pending candidates after the cursor that lies outside every lease, cut short before the
next lease, so two leases never overlap and taking over a dead worker's lease can never
touch docs a live worker holds. Ranges are in MongoDB's ``_id`` order, types first
(:func:`embedder.ids.sort_key`): a lease may span ids of two types, and is then read a type
at a time (:func:`embedder.ids.range_clauses`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from embedder.ids import sort_key
from embedder.queue.heartbeat import Heartbeat


@dataclass(frozen=True, slots=True)
class Lease:
    id: str
    lo: Any
    hi: Any
    owner: str

    def covers(self, doc_id: Any) -> bool:
        key = sort_key(doc_id)
        return sort_key(self.lo) <= key <= sort_key(self.hi)

    def to_bson(self) -> dict[str, Any]:
        return {"id": self.id, "lo": self.lo, "hi": self.hi, "owner": self.owner}

    @classmethod
    def from_bson(cls, raw: Mapping[str, Any]) -> Lease:
        return cls(str(raw["id"]), raw["lo"], raw["hi"], str(raw["owner"]))


@dataclass(frozen=True, slots=True)
class ControlView:
    """One read of a queue's control document."""

    version: int
    cursor: Any
    leases: tuple[Lease, ...]
    expiry: Mapping[str, dt.datetime | None]  # owner -> heartbeat expiry
    paused: bool

    @classmethod
    def from_bson(cls, raw: Mapping[str, Any]) -> ControlView:
        workers = raw.get("workers") or {}
        return cls(
            version=int(raw.get("version", 0)),
            cursor=raw.get("cursor"),
            leases=tuple(Lease.from_bson(x) for x in raw.get("leases") or ()),
            expiry={owner: Heartbeat.from_bson(w).expires_at for owner, w in workers.items()},
            paused=bool(raw.get("paused", False)),
        )

    def expired_leases(self, now: dt.datetime) -> list[Lease]:
        return [lease for lease in self.leases if _expired(self.expiry.get(lease.owner), now)]

    def leases_of_others(self, owner: str) -> list[Lease]:
        return [lease for lease in self.leases if lease.owner != owner]


def _expired(expires_at: dt.datetime | None, now: dt.datetime) -> bool:
    return expires_at is None or expires_at < now


@dataclass(frozen=True, slots=True)
class ClaimPlan:
    start: int  # position of the run in the candidates
    ids: list[Any]  # the run to lease; may be empty when every candidate is leased
    cursor: Any  # where the queue's cursor moves to


def plan_claim(candidates: Sequence[Any], leases: Sequence[Lease]) -> ClaimPlan:
    """The run of ``candidates`` (sorted by ``_id``) that no lease covers or spans.

    Leading candidates inside leases are skipped; the run then ends before the first
    candidate that a lease covers or that lies beyond the start of another lease. When every
    candidate is leased, the cursor jumps to the end of the furthest lease that covered one,
    so a scan passes a leased range in one step rather than page by page.
    """
    if not candidates:
        raise ValueError("plan_claim needs at least one candidate")
    starts = [sort_key(lease.lo) for lease in leases]
    run: list[Any] = []
    start = 0
    skip_to = candidates[-1]
    for position, doc_id in enumerate(candidates):
        covering = [lease for lease in leases if lease.covers(doc_id)]
        if covering:
            if run:
                break
            start = position + 1
            skip_to = max([skip_to, *(lease.hi for lease in covering)], key=sort_key)
            continue
        if run and any(sort_key(run[0]) < lo <= sort_key(doc_id) for lo in starts):
            break
        run.append(doc_id)
    return ClaimPlan(start, run, run[-1] if run else skip_to)

"""A worker's heartbeat: its entry under ``workers`` in the queue's control document.

Written by the queue for its worker (``MongoWorkQueue.heartbeat``, with the pipeline's
progress), read by other workers (is a lease's owner alive?) and by ``embedder status``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from embedder.queue.liveness import Life, ProcessRef, life


@dataclass(frozen=True, slots=True)
class WorkerProgress:
    """How far a worker's run is, as ``embedder status`` shows it."""

    embedded: int = 0  # docs whose vectors are back (from the fleet, or re-used)
    marked: int = 0  # of those, docs in a durable shard and marked done
    failed: int = 0
    rate_docs_per_s: float = 0.0  # docs embedded per second, lately
    leases: int = 0
    last_shard: str = ""
    reused: int = 0  # docs that got an equal text's vector instead of a fleet request
    paused: bool = False  # holds nothing and waits for `embedder resume`
    waiting_for: str = ""  # what an idle worker waits for (a gone worker's lease to expire)

    @classmethod
    def from_bson(cls, raw: Mapping[str, Any]) -> WorkerProgress:
        return cls(
            embedded=int(raw.get("embedded", 0)),
            marked=int(raw.get("marked", 0)),
            failed=int(raw.get("failed", 0)),
            rate_docs_per_s=float(raw.get("rate_docs_per_s", 0.0)),
            leases=int(raw.get("leases", 0)),
            last_shard=str(raw.get("last_shard", "")),
            reused=int(raw.get("reused", 0)),
            paused=bool(raw.get("paused", False)),
            waiting_for=str(raw.get("waiting_for", "")),
        )


@dataclass(frozen=True, slots=True)
class Heartbeat:
    host: str
    pid: int | None
    seen_at: dt.datetime | None
    expires_at: dt.datetime | None  # its leases may be taken over after this
    progress: WorkerProgress | None = None  # None until the pipeline's first report
    pid_namespace: str = ""  # with host, pid and started: see embedder.queue.liveness
    started: int | None = None

    @classmethod
    def of(
        cls,
        process: ProcessRef,
        seen_at: dt.datetime,
        expires_at: dt.datetime,
        progress: WorkerProgress | None = None,
    ) -> Heartbeat:
        return cls(
            process.host,
            process.pid,
            seen_at,
            expires_at,
            progress,
            process.pid_namespace,
            process.started,
        )

    @property
    def process(self) -> ProcessRef:
        return ProcessRef(self.host, self.pid, self.pid_namespace, self.started)

    def life(self, now: dt.datetime) -> Life:
        return life(self.process, self.seen_at, self.expires_at, now)

    def to_bson(self) -> dict[str, Any]:
        progress = dataclasses.asdict(self.progress) if self.progress is not None else {}
        return {
            **progress,
            "expires_at": self.expires_at,
            "host": self.host,
            "pid": self.pid,
            "pid_namespace": self.pid_namespace,
            "started": self.started,
            "seen_at": self.seen_at,
        }

    @classmethod
    def from_bson(cls, raw: Mapping[str, Any]) -> Heartbeat:
        return cls(
            host=str(raw.get("host", "?")),
            pid=raw.get("pid"),
            seen_at=_utc(raw.get("seen_at")),
            expires_at=_utc(raw.get("expires_at")),
            progress=WorkerProgress.from_bson(raw),
            pid_namespace=str(raw.get("pid_namespace") or ""),
            started=started if isinstance(started := raw.get("started"), int) else None,
        )

    def alive(self, now: dt.datetime) -> bool:
        return self.expires_at is not None and self.expires_at > now


def _utc(value: object) -> dt.datetime | None:
    """A stored time, as an aware UTC datetime (MongoDB gives naive UTC by default)."""
    if not isinstance(value, dt.datetime):
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value

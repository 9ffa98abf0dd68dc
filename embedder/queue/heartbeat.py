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


@dataclass(frozen=True, slots=True)
class WorkerProgress:
    """How far a worker's run is, as ``embedder status`` shows it."""

    embedded: int = 0
    failed: int = 0
    rate_docs_per_s: float = 0.0
    leases: int = 0
    last_shard: str = ""
    reused: int = 0  # docs that got an equal text's vector instead of a fleet request
    paused: bool = False  # holds nothing and waits for `embedder resume`

    @classmethod
    def from_bson(cls, raw: Mapping[str, Any]) -> WorkerProgress:
        return cls(
            embedded=int(raw.get("embedded", 0)),
            failed=int(raw.get("failed", 0)),
            rate_docs_per_s=float(raw.get("rate_docs_per_s", 0.0)),
            leases=int(raw.get("leases", 0)),
            last_shard=str(raw.get("last_shard", "")),
            reused=int(raw.get("reused", 0)),
            paused=bool(raw.get("paused", False)),
        )


@dataclass(frozen=True, slots=True)
class Heartbeat:
    host: str
    pid: int | None
    seen_at: dt.datetime | None
    expires_at: dt.datetime | None  # its leases may be taken over after this
    progress: WorkerProgress | None = None  # None until the pipeline's first report

    def to_bson(self) -> dict[str, Any]:
        progress = dataclasses.asdict(self.progress) if self.progress is not None else {}
        return {
            **progress,
            "expires_at": self.expires_at,
            "host": self.host,
            "pid": self.pid,
            "seen_at": self.seen_at,
        }

    @classmethod
    def from_bson(cls, raw: Mapping[str, Any]) -> Heartbeat:
        return cls(
            host=str(raw.get("host", "?")),
            pid=raw.get("pid"),
            seen_at=seen if isinstance(seen := raw.get("seen_at"), dt.datetime) else None,
            expires_at=_utc(raw.get("expires_at")),
            progress=WorkerProgress.from_bson(raw),
        )

    def alive(self, now: dt.datetime) -> bool:
        return self.expires_at is not None and self.expires_at > now


def _utc(value: object) -> dt.datetime | None:
    """A stored time, as an aware UTC datetime (MongoDB gives naive UTC by default)."""
    if not isinstance(value, dt.datetime):
        return None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value

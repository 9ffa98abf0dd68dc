"""``embedder status``: how far a queue is, how fast it goes, when it ends, what is wrong.

Every count comes from one of the queue's two indexes (pending docs from the partial
work-queue index, done and failed from the monitoring index), so it stays cheap on a
collection of hundreds of millions of docs; workers report their rate in their heartbeats.

A worker is listed as alive, silent (two heartbeats missed) or gone (its process is gone from
this host, or its heartbeat expired: a lease TTL without one); a gone worker is listed for
``GONE_LISTED_FOR`` after its last heartbeat, then no longer.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from embedder.errors import QueueError
from embedder.queue.heartbeat import Heartbeat, WorkerProgress
from embedder.queue.liveness import FORGET_AFTER, Life
from embedder.queue.marks import done_query, failed_query, reason_field
from embedder.queue.spec import QueueSpec
from embedder.storage import filesystems as storage
from embedder.storage import manifest as mf
from embedder.worker.progress import duration

GONE_LISTED_FOR = FORGET_AFTER


@dataclass
class WorkerState:
    owner: str
    host: str
    pid: int | None
    alive: bool
    seen_at: str | None
    leases: int
    embedded: int  # docs whose vectors came back
    rate_docs_per_s: float  # docs embedded per second, lately
    last_shard: str
    reused: int = 0  # docs that got an equal text's vector instead of a fleet request
    paused: bool = False  # holds nothing and waits for `embedder resume`
    marked: int = 0  # docs in durable shards, marked done
    state: str = Life.ALIVE.value  # alive, silent or gone (embedder.queue.liveness)
    expires_at: str | None = None  # its leases may be taken over from then on
    waiting_for: str = ""  # what it waits for, when it waits for a gone worker's lease


@dataclass
class QueueStatus:
    collection: str
    target_field: str
    pending: int
    done: int
    failed: int
    failure_reasons: list[tuple[str, int]]
    rate_docs_per_s: float
    eta_s: float | None
    paused: bool
    workers: list[WorkerState] = field(default_factory=list)
    leases: int = 0
    consolidated_rows: int | None = None
    consolidated_files: int | None = None
    last_consolidation: str | None = None
    shards_waiting: int | None = None
    shards_dir: str | None = None  # where the output is read: the queue's recorded locations
    consolidated_dir: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def lines(self) -> list[str]:
        total = self.pending + self.done + self.failed
        share = f"{100 * self.done / total:.1f}%" if total else "-"
        eta = (
            duration(self.eta_s)
            if self.eta_s is not None
            else ("done" if not self.pending else "-")
        )
        in_hand = sum(w.embedded - w.marked for w in self.workers if w.state != Life.GONE)
        lines = [
            f"{self.collection} -> {self.target_field}{'  (PAUSED)' if self.paused else ''}",
            f"  done {self.done:,} ({share})   pending {self.pending:,} ({in_hand:,} of them "
            f"embedded, not yet durable)   failed {self.failed:,}",
            f"  rate {self.rate_docs_per_s:,.1f} docs/s embedded   ETA {eta}   "
            f"leases {self.leases}",
        ]
        for reason, count in self.failure_reasons:
            lines.append(f"  failed x{count:,}: {reason}")
        for worker in self.workers:
            lines.append(
                f"  worker {worker.owner[:8]} on {worker.host} pid {worker.pid}: {_doing(worker)}"
            )
        if self.consolidated_rows is not None:
            lines.append(
                f"  consolidated {self.consolidated_rows:,} rows in {self.consolidated_files} files "
                f"(last run {self.last_consolidation or 'never'}); shards waiting {self.shards_waiting}"
            )
        if self.shards_dir or self.consolidated_dir:
            lines.append(
                f"  output: shards {self.shards_dir or '-'}; consolidated {self.consolidated_dir or '-'}"
            )
        return lines


async def collect(
    client: AsyncMongoClient[dict[str, Any]],
    spec: QueueSpec,
    *,
    consolidated_uri: str | None = None,
    shards_uri: str | None = None,
    now: dt.datetime | None = None,
) -> QueueStatus:
    docs = client[spec.database][spec.collection]
    try:
        pending = await docs.count_documents(spec.pending_query(), hint=spec.index_name)
        target = spec.target_field
        done = await docs.count_documents(done_query(target), hint=spec.done_index_name)
        failed = await docs.count_documents(failed_query(target), hint=spec.done_index_name)
        reasons = await (
            await docs.aggregate(
                [
                    {"$match": failed_query(target)},
                    {"$group": {"_id": f"${reason_field(target)}", "count": {"$sum": 1}}},
                    {"$sort": {"count": -1}},
                    {"$limit": 5},
                ],
                hint=spec.done_index_name,
            )
        ).to_list()
        control = await client[spec.database][spec.control_collection].find_one({"_id": spec.key})
    except PyMongoError as exc:
        raise QueueError(f"reading the queue's state failed: {exc}") from exc
    workers = _workers(control or {}, now or dt.datetime.now(dt.UTC))
    alive = [w for w in workers if w.state != Life.GONE]
    rate = sum(w.rate_docs_per_s for w in alive)
    # Pending docs include those embedded and waiting for their shard: not work left.
    remaining = max(pending - sum(w.embedded - w.marked for w in alive), 0)
    status = QueueStatus(
        collection=f"{spec.database}.{spec.collection}",
        target_field=spec.target_field,
        pending=pending,
        done=done,
        failed=failed,
        failure_reasons=[(str(r["_id"]), int(r["count"])) for r in reasons],
        rate_docs_per_s=rate,
        eta_s=remaining / rate if rate > 0 and remaining else None,
        paused=bool((control or {}).get("paused", False)),
        workers=workers,
        leases=len((control or {}).get("leases") or []),
    )
    status.shards_dir, status.consolidated_dir = shards_uri, consolidated_uri
    if consolidated_uri:
        _consolidation(status, consolidated_uri, shards_uri)
    return status


def watch[S](
    read: Callable[[], S],
    show: Callable[[S], None],
    *,
    every_s: float,
    stop: threading.Event,
) -> None:
    """``embedder status --watch``: show the status now and every ``every_s`` seconds, until
    ``stop`` is set."""
    while True:
        show(read())
        if stop.wait(every_s):
            return


def _workers(control: dict[str, Any], now: dt.datetime) -> list[WorkerState]:
    leases = control.get("leases") or []
    states = []
    for owner, raw in sorted((control.get("workers") or {}).items()):
        beat = Heartbeat.from_bson(raw)
        progress = beat.progress or WorkerProgress()
        life = beat.life(now)
        last_seen = beat.seen_at or beat.expires_at
        if life is Life.GONE and (last_seen is None or now - last_seen > GONE_LISTED_FOR):
            continue
        states.append(
            WorkerState(
                owner=owner,
                host=beat.host,
                pid=beat.pid,
                alive=life is not Life.GONE,
                seen_at=beat.seen_at.isoformat(timespec="seconds") if beat.seen_at else None,
                leases=sum(1 for lease in leases if lease.get("owner") == owner),
                embedded=progress.embedded,
                rate_docs_per_s=progress.rate_docs_per_s,
                last_shard=progress.last_shard,
                reused=progress.reused,
                paused=progress.paused,
                marked=progress.marked,
                state=life.value,
                expires_at=_clock(beat.expires_at),
                waiting_for=progress.waiting_for,
            )
        )
    return states


def _doing(worker: WorkerState) -> str:
    """What a worker is doing, as its status line says it."""
    if worker.state == Life.GONE:
        leases = (
            f"; its {worker.leases} leases expire at {worker.expires_at}" if worker.leases else ""
        )
        return f"gone (last heard {worker.seen_at or '?'}){leases}"
    state = "paused" if worker.paused else worker.state
    if worker.waiting_for:
        state += f", waiting for {worker.waiting_for}"
    return (
        f"{state}, {worker.leases} leases, {worker.embedded:,} embedded ({worker.reused:,} by "
        f"re-use), {worker.marked:,} durable, {worker.rate_docs_per_s:,.1f} docs/s, last shard "
        f"{worker.last_shard or '-'}"
    )


def _clock(at: dt.datetime | None) -> str | None:
    return at.astimezone(dt.UTC).strftime("%H:%M:%S UTC") if at else None


def _consolidation(status: QueueStatus, consolidated_uri: str, shards_uri: str | None) -> None:
    try:
        fs, root = storage.open_root(consolidated_uri, create=False)
        manifest = mf.load(fs, root)
    except (OSError, ValueError):
        return
    status.consolidated_rows = manifest.total_rows
    status.consolidated_files = len(manifest.files)
    status.last_consolidation = manifest.runs[-1].at if manifest.runs else None
    if shards_uri:
        shard_fs, shard_root = storage.open_root(shards_uri, create=False)
        status.shards_waiting = len(storage.list_parquet(shard_fs, shard_root))

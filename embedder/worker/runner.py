"""Assembling a worker from settings and running it under signal handling."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
from prometheus_client import start_http_server
from pymongo import AsyncMongoClient

from embedder import __version__
from embedder.errors import ConfigurationError, EmbedderError, QueueError
from embedder.fleet.protocol import EmbedOptions
from embedder.fleet.routing import Fleet, FleetSettings
from embedder.identity import embed_key
from embedder.queue import connection as mongo
from embedder.queue.diagnosis import why_nothing_pending
from embedder.queue.heartbeat import WorkerProgress
from embedder.queue.output_location import record_output
from embedder.queue.retry import MongoRetry
from embedder.queue.settings import WorkQueueSettings
from embedder.queue.spec import QueueSpec
from embedder.queue.work_queue import MongoWorkQueue
from embedder.storage import filesystems as storage
from embedder.storage.schema import ShardMetadata, read_footer
from embedder.storage.shards import ShardSettings, ShardWriter
from embedder.telemetry import Summary, Telemetry
from embedder.worker.change_watch import ChangeWatcher, ChangeWatchSettings
from embedder.worker.pipeline import LeaseTracker, Worker, WorkerSettings
from embedder.worker.progress import Progress, for_stream
from embedder.worker.reuse import ReuseSettings, TextReuse
from embedder.worker.vector_cache import VectorCache

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    port: int  # Prometheus metrics served here
    host: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class EmbedJob:
    """One worker's configuration: each stage's own settings (which check their own ranges),
    and the combinations between them, checked here."""

    mongo_uri: str
    queue: QueueSpec
    fleet: FleetSettings
    shards: ShardSettings
    # Its text field and heartbeat interval are the queue's: taken from ``queue`` and
    # ``work_queue`` when the worker starts.
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    work_queue: WorkQueueSettings = field(default_factory=WorkQueueSettings)
    reuse: ReuseSettings = field(default_factory=ReuseSettings)
    # Continuous mode: re-queue docs whose text changes (change streams, or polling); None: off.
    changes: ChangeWatchSettings | None = None
    metrics: MetricsSettings | None = None
    mongo_options: Mapping[str, Any] = field(default_factory=dict)  # passed to pymongo as-is
    progress_bar: bool | None = None  # None: a bar when stderr is a terminal

    def __post_init__(self) -> None:
        if self.changes is not None and self.worker.once:
            raise ConfigurationError(
                "--watch-changes cannot be used with --once: a worker that exits when nothing "
                "is pending has no time to watch"
            )


class Supervised(Protocol):
    """A worker process of ``embed --processes`` (``embedder.worker.process_link``): its
    display, its progress record and its stop requests go through its supervisor."""

    def display(self, pending: int) -> Progress: ...
    def report(self, progress: WorkerProgress) -> None: ...
    def attach(self, stop: Callable[[], None]) -> None: ...


async def run_embed(job: EmbedJob, supervisor: Supervised | None = None) -> Summary:
    telemetry = Telemetry()
    phases = telemetry.summary.phases
    phases.reach("started")
    if job.metrics is not None:
        _serve_metrics(job.metrics, telemetry)
    client = mongo.connect(job.mongo_uri, **job.mongo_options)
    try:
        await _check_queue(client, job)
        queue = MongoWorkQueue(
            client,
            job.queue,
            claim_size=job.work_queue.claim_size,
            lease_ttl_s=job.work_queue.lease_ttl_s,
            retry=MongoRetry(job.work_queue.outage_timeout_s),
        )
        fleet = await Fleet.connect(job.fleet, telemetry)
        phases.reach("fleet_ready")
        reuse: TextReuse[LeaseTracker] | None = None
        try:
            key = embed_key(fleet.info, job.fleet.options, fleet.dimension)
            await asyncio.to_thread(check_shards_are_ours, job.shards, key, fleet)
            if job.shards.filesystem is None:  # else a path only this process can open
                await record_output(client, job.queue, shards=job.shards.cold_uri)
            writer = ShardWriter(
                job.shards,
                owner=queue.owner,
                dimension=fleet.dimension,
                metadata=shard_metadata(
                    fleet,
                    job.fleet.options,
                    key,
                    queue=job.queue.key,
                    target_field=job.queue.target_field,
                ),
            )
            settings = dataclasses.replace(
                job.worker,
                text_field=job.queue.text_field,
                heartbeat_interval_s=job.work_queue.lease_ttl_s / 3,
            )
            if job.reuse.enabled:
                cache = await _open_cache(job, key, fleet.dimension, fleet.probe_vector)
                reuse = TextReuse(cache, job.reuse.memory_bytes, fleet.dimension)
            pending = await queue.pending_count()
            progress = (
                supervisor.display(pending)
                if supervisor is not None
                else for_stream(pending, enabled=job.progress_bar)
            )
            phases.reach("set_up")
            worker = Worker(
                queue,
                fleet,
                writer,
                telemetry,
                settings,
                progress=progress,
                reuse=reuse,
                embed_key=key,
                reporter=supervisor.report if supervisor is not None else None,
            )
            log.info(
                "embedding %s.%s into %r with %s (dim %d) on %d endpoint(s); shards to %s",
                job.queue.database,
                job.queue.collection,
                job.queue.target_field,
                fleet.info.model_id,
                fleet.dimension,
                len(job.fleet.urls),
                job.shards.cold_uri,
            )
            with stop_on_signals(worker):
                if supervisor is not None:
                    supervisor.attach(worker.request_stop)
                if job.changes is not None:
                    watcher = ChangeWatcher(
                        client,
                        job.queue,
                        poll_interval_s=job.changes.poll_interval_s,
                        retry=MongoRetry(job.work_queue.outage_timeout_s),
                    )
                    return await _run_watching(worker, watcher)
                return await worker.run()
        finally:
            await fleet.close()
            if reuse is not None and reuse.cache is not None:
                await reuse.cache.aclose()
            phases.reach("closed")
    finally:
        await client.close()


def _serve_metrics(metrics: MetricsSettings, telemetry: Telemetry) -> None:
    try:
        start_http_server(metrics.port, addr=metrics.host, registry=telemetry.registry)
    except OSError as exc:  # a port in use, an address not of this machine
        where = f"{metrics.host}:{metrics.port}"
        raise ConfigurationError(
            f"--metrics-port {metrics.port}: cannot listen on {where} "
            f"({exc.strerror or exc}); choose another --metrics-port or --metrics-host"
        ) from None
    log.info("metrics on http://%s:%d/metrics", metrics.host, metrics.port)


async def _check_queue(client: AsyncMongoClient[dict[str, Any]], job: EmbedJob) -> None:
    """MongoDB answers, the queue has its indexes, and why nothing is pending if so."""
    await mongo.check_reachable(client, job.mongo_uri)
    await mongo.check_indexes(client, job.queue, job.mongo_uri)
    await mongo.check_target_field(client, job.queue)
    nothing = await why_nothing_pending(client, job.queue)
    if nothing is not None:
        log.warning("nothing to embed: %s", nothing)


async def _run_watching(worker: Worker, watcher: ChangeWatcher) -> Summary:
    """The worker beside its change watcher. The watcher ends only by failing (it waits out
    MongoDB outages up to the bound first): then the worker drains and the run fails with the
    watcher's error, for a worker that no longer watches must not look healthy."""
    working = asyncio.create_task(worker.run(), name="worker")
    watching = asyncio.create_task(watcher.run(), name="change-watcher")
    try:
        await asyncio.wait([working, watching], return_when=asyncio.FIRST_COMPLETED)
        if not watching.done():
            return working.result()
        failure = watching.exception() if not watching.cancelled() else None
        log.error("the change watcher stopped (%s): draining, then exiting", failure)
        worker.request_stop()
        try:
            await working
        except EmbedderError as drain_failed:  # MongoDB gone: leaving fails too, say so
            log.error("draining after the watcher stopped failed as well: %s", drain_failed)
        raise QueueError(
            f"watching for changed texts failed: {failure}; edits made from now on would be "
            "missed, so the worker stops (a restart resumes watching where it stopped)"
        ) from failure
    finally:
        for task in (working, watching):
            task.cancel()
        await asyncio.gather(working, watching, return_exceptions=True)


async def _open_cache(
    job: EmbedJob, key: str, dimension: int, probe: np.ndarray
) -> VectorCache | None:
    """The vector cache of this embed key on the hot tier; rebuilt from the shards if lost."""
    # A row is the vector plus its 16-byte key and SQLite's own overhead, about 64 bytes.
    rows = job.reuse.vector_cache_bytes // (dimension * 4 + 64)
    if rows <= 0:
        return None
    path = job.shards.hot_dir / "vector-cache" / f"{key}.sqlite"
    cache = await asyncio.to_thread(
        VectorCache, path, embed_key=key, dimension=dimension, max_rows=rows, probe=probe
    )
    if cache.fresh:
        added = await asyncio.to_thread(cache.rebuild, job.shards.cold_uri, job.shards.filesystem)
        log.info("vector cache %s: new, %d vectors taken from existing shards", path, added)
    return cache


def check_shards_are_ours(settings: ShardSettings, key: str, fleet: Fleet) -> None:
    """Refuse a shard directory that holds another model's (or options') shards: each
    target field, and so each model, keeps its own, and the consolidator would refuse the mix."""
    fs, root = storage.open_root(settings.cold_uri, filesystem=settings.filesystem)
    existing = storage.list_parquet(fs, root)
    if not existing:
        return
    try:
        theirs = read_footer(fs, existing[-1].path).metadata
    except (OSError, pa.ArrowException):
        return  # a damaged shard is the consolidator's to report
    if theirs.embed_key and theirs.embed_key != key:
        model = theirs.model_id or "?"
        raise ConfigurationError(
            f"{settings.cold_uri} holds shards of another model or options ({model}, embed key "
            f"{theirs.embed_key}; this run is {fleet.info.model_id}, {key}): give this target field its "
            "own --output-dir"
        )


def shard_metadata(
    fleet: Fleet, options: EmbedOptions, key: str, *, queue: str, target_field: str
) -> ShardMetadata:
    """What every shard of this run records: the model, its options, and whose rows."""
    return ShardMetadata(
        embed_key=key,
        model_id=fleet.info.model_id,
        model_sha=fleet.info.model_sha or "",
        dimension=fleet.dimension,
        normalize=options.normalize,
        truncate="server" if options.truncate is None else str(options.truncate).lower(),
        queue=queue,
        target_field=target_field,
        embedder_version=__version__,
    )


class stop_on_signals:
    """First SIGINT/SIGTERM: drain and exit 0. Second: exit at once; leases simply expire."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._count = 0

    def __enter__(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def __exit__(self, *_: object) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._count += 1
        if self._count == 1:
            log.warning(
                "%s received: finishing in-flight work (signal again to exit at once)", sig.name
            )
            self._worker.request_stop()
            return
        log.error(
            "%s received again: exiting now; in-flight docs will be redone by the next run",
            sig.name,
        )
        logging.shutdown()
        os._exit(128 + sig.value)

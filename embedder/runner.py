"""Assembling a worker from settings and running it under signal handling."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import start_http_server

from embedder import __version__, mongo
from embedder.fleet import Fleet, FleetSettings
from embedder.mongo_retry import MongoRetry
from embedder.pipeline import Worker, WorkerSettings
from embedder.progress import for_stream
from embedder.queue import MongoWorkQueue
from embedder.queue_spec import QueueSpec
from embedder.shards import ShardSettings, ShardWriter
from embedder.telemetry import Summary, Telemetry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EmbedJob:
    mongo_uri: str
    queue: QueueSpec
    fleet: FleetSettings
    shards: ShardSettings
    once: bool = False
    claim_size: int = 1000
    lease_ttl_s: float = 60.0
    poll_interval_s: float = 5.0
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    mongo_options: Mapping[str, Any] = field(default_factory=dict)  # passed to pymongo as-is
    progress_bar: bool | None = None  # None: a bar when stderr is a terminal
    mongo_outage_timeout_s: float = 600.0


async def run_embed(job: EmbedJob) -> Summary:
    telemetry = Telemetry()
    if job.metrics_port is not None:
        start_http_server(job.metrics_port, addr=job.metrics_host, registry=telemetry.registry)
        log.info("metrics on http://%s:%d/metrics", job.metrics_host, job.metrics_port)
    client = mongo.connect(job.mongo_uri, **job.mongo_options)
    try:
        await mongo.check_reachable(client, job.mongo_uri)
        await mongo.check_indexes(client, job.queue)
        await mongo.check_target_field(client, job.queue)
        queue = MongoWorkQueue(
            client,
            job.queue,
            claim_size=job.claim_size,
            lease_ttl_s=job.lease_ttl_s,
            retry=MongoRetry(job.mongo_outage_timeout_s),
        )
        fleet = await Fleet.connect(job.fleet, telemetry)
        try:
            writer = ShardWriter(
                job.shards,
                owner=queue.owner,
                dimension=fleet.dimension,
                metadata=_shard_metadata(job, fleet),
            )
            settings = WorkerSettings(
                text_field=job.queue.text_field,
                once=job.once,
                poll_interval_s=job.poll_interval_s,
                heartbeat_interval_s=job.lease_ttl_s / 3,
            )
            progress = for_stream(await queue.pending_count(), enabled=job.progress_bar)
            worker = Worker(queue, fleet, writer, telemetry, settings, progress=progress)
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
            with _stop_on_signals(worker):
                return await worker.run()
        finally:
            await fleet.close()
    finally:
        await client.close()


def _shard_metadata(job: EmbedJob, fleet: Fleet) -> dict[str, str]:
    options = job.fleet.options
    return {
        "model_id": fleet.info.model_id,
        "model_sha": fleet.info.model_sha or "",
        "dimension": str(fleet.dimension),
        "normalize": str(options.normalize).lower(),
        "truncate": "server" if options.truncate is None else str(options.truncate).lower(),
        "queue": job.queue.key,
        "target_field": job.queue.target_field,
        "embedder_version": __version__,
    }


class _stop_on_signals:
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

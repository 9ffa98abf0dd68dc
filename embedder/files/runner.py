"""Assembling a worker over a file corpus and running it: the same pipeline, fleet, shards,
metrics and signal handling as a MongoDB worker, with a ``FileWorkQueue`` for a queue."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import start_http_server

from embedder.errors import ConfigurationError
from embedder.files.chunk_shards import ChunkShardWriter
from embedder.files.file_queue import FileWorkQueue, require_exclusive_create
from embedder.files.layout import FilesOutput
from embedder.files.plan import DEFAULT_CHUNK_ROWS, ChunkPlan, Selection
from embedder.files.plan_store import ensure_plan
from embedder.files.readers import CorpusReader
from embedder.files.records import CorpusSource
from embedder.fleet.routing import Fleet, FleetSettings
from embedder.identity import embed_key
from embedder.storage import conditional_create
from embedder.storage.shards import ShardSettings
from embedder.telemetry import Summary, Telemetry
from embedder.worker.pipeline import Worker, WorkerSettings
from embedder.worker.progress import for_stream
from embedder.worker.runner import (
    MetricsSettings,
    check_shards_are_ours,
    shard_metadata,
    stop_on_signals,
)

log = logging.getLogger(__name__)

DEFAULT_HOT_DIR = Path("embeddings/hot")


@dataclass(frozen=True, slots=True)
class FilesJob:
    """One worker over a file corpus."""

    source: CorpusSource
    output_uri: str
    fleet: FleetSettings
    selection: Selection = field(default_factory=Selection)
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    hot_dir: Path = DEFAULT_HOT_DIR
    lease_ttl_s: float = 60.0
    # How soon a chunk whose last row is embedded gets its shard (the pipeline commits
    # at least this often while rows arrive).
    commit_interval_s: float = 1.0
    worker: WorkerSettings = field(default_factory=lambda: WorkerSettings(once=True))
    metrics: MetricsSettings | None = None
    progress_bar: bool | None = None  # None: a bar when stderr is a terminal

    def __post_init__(self) -> None:
        if self.chunk_rows < 1:
            raise ConfigurationError(f"--chunk-rows must be at least 1, not {self.chunk_rows}")
        if self.lease_ttl_s < 3:
            raise ConfigurationError("--lease-ttl must be at least 3 seconds")
        if not self.commit_interval_s > 0:
            raise ConfigurationError("the commit interval must be positive")


def corpus_key(plan: ChunkPlan) -> str:
    """What the shards record as their queue: one corpus (its files' sizes, its text field,
    its chunks and rows), the same for every part, so the consolidator merges the parts and
    refuses another corpus's shards."""
    selection = plan.selection
    return (
        f"files:{plan.fingerprint}:{plan.source.text_field}:{plan.chunk_rows}:"
        f"{selection.rows_label}"
    )


async def run_embed_files(job: FilesJob) -> Summary:
    telemetry = Telemetry()
    if job.metrics is not None:
        start_http_server(job.metrics.port, addr=job.metrics.host, registry=telemetry.registry)
        log.info("metrics on http://%s:%d/metrics", job.metrics.host, job.metrics.port)
    output = FilesOutput.open(job.output_uri)
    exclusive = conditional_create.for_uri(job.output_uri)
    require_exclusive_create(output, exclusive)
    with CorpusReader(job.source) as reader:
        plan = await asyncio.to_thread(
            ensure_plan,
            output,
            reader,
            job.selection,
            job.chunk_rows,
            create_exclusive=exclusive,
        )
        fleet = await Fleet.connect(job.fleet, telemetry)
        try:
            key = embed_key(fleet.info, job.fleet.options, fleet.dimension)
            shards = ShardSettings(
                cold_uri=output.shards_uri,
                hot_dir=job.hot_dir,
                max_rows=job.chunk_rows,
                max_age_s=job.commit_interval_s,
                prefix="chunk",
            )
            await asyncio.to_thread(check_shards_are_ours, shards, key, fleet)
            owner = uuid.uuid4().hex
            writer = ChunkShardWriter(
                shards,
                owner=owner,
                dimension=fleet.dimension,
                metadata=shard_metadata(
                    fleet,
                    job.fleet.options,
                    key,
                    queue=corpus_key(plan),
                    target_field=job.source.text_field,
                ),
            )
            queue = FileWorkQueue(
                output,
                plan,
                reader,
                writer,
                telemetry,
                lease_ttl_s=job.lease_ttl_s,
                create_exclusive=exclusive,
                owner=owner,
            )
            settings = dataclasses.replace(
                job.worker,
                text_field=job.source.text_field,
                heartbeat_interval_s=job.lease_ttl_s / 3,
            )
            progress = for_stream(await queue.pending_count(), enabled=job.progress_bar)
            worker = Worker(
                queue, fleet, writer, telemetry, settings, progress=progress, embed_key=key
            )
            part = plan.part_chunks()
            log.info(
                "embedding %s (%s: %d chunks, %d rows) with %s (dim %d) on %d endpoint(s) into %s",
                job.source.uri,
                plan.selection.describe(),
                len(part),
                sum(c.rows for c in part),
                fleet.info.model_id,
                fleet.dimension,
                len(job.fleet.urls),
                output.uri,
            )
            with stop_on_signals(worker):
                return await worker.run()
        finally:
            await fleet.close()

"""Commands for running workers: ``embed``, ``indexes``, ``pause``, ``resume``.

Each group of ``embed``'s options becomes the settings object of the stage that owns it
(``FleetSettings``, ``ShardSettings``, ``WorkerSettings``...), with that object's defaults.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import click

from embedder import logs
from embedder.cli import failures
from embedder.cli.options import (
    AT_LEAST_ONE,
    DIRS_HELP,
    ENDPOINT_OPTIONS,
    POSITIVE_SECONDS,
    SECONDS_OR_ZERO,
    default,
    default_dirs,
    endpoint_urls,
    options_group,
    queue_options,
    secret,
)
from embedder.cli.running import run, with_mongo, write_json
from embedder.cli.types import BYTE_SIZE, CONCURRENCY, PROCESS_COUNT, WRITABLE_FILE, size_text
from embedder.errors import EmbedderError
from embedder.fleet.protocol import EmbedOptions
from embedder.fleet.routing import FleetSettings, RetryPolicy
from embedder.queue import connection as mongo
from embedder.queue.output_location import absolute
from embedder.queue.settings import WorkQueueSettings
from embedder.queue.spec import QueueSpec
from embedder.storage.shards import ShardSettings
from embedder.worker.change_watch import ChangeWatchSettings
from embedder.worker.pipeline import WorkerSettings
from embedder.worker.reuse import ReuseSettings
from embedder.worker.runner import EmbedJob, MetricsSettings, run_embed

DEFAULT_HOT_DIR = "embeddings/hot"


def _fleet(
    *,
    tei_urls: str,
    tei_api_key: str | None,
    tei_api_key_file: Path | None,
    batch_size: int,
    concurrency: int | None,
    normalize: bool,
    truncate: bool | None,
    request_timeout: float,
    outage_timeout: float,
    model_revision: str | None,
    wait_for_servers: float,
    openai_model: str | None,
) -> FleetSettings:
    return FleetSettings(
        urls=endpoint_urls(tei_urls),
        options=EmbedOptions(normalize=normalize, truncate=truncate),
        batch_size=batch_size,
        concurrency=concurrency,
        api_key=secret(tei_api_key, tei_api_key_file, "TEI API key"),
        request_timeout_s=request_timeout,
        retry=RetryPolicy(outage_timeout_s=outage_timeout),
        model_revision=model_revision,
        wait_for_servers_s=wait_for_servers,
        openai_model=openai_model,
    )


fleet_options = options_group(
    "fleet",
    _fleet,
    *ENDPOINT_OPTIONS,
    click.option(
        "--batch-size",
        default=default(FleetSettings, "batch_size"),
        show_default=True,
        type=AT_LEAST_ONE,
        envvar="EMBEDDER_BATCH_SIZE",
        help="Inputs per request (capped at the servers' max_client_batch_size).",
    ),
    click.option(
        "--concurrency",
        default="auto",
        show_default=True,
        type=CONCURRENCY,
        envvar="EMBEDDER_CONCURRENCY",
        help="Requests in flight per endpoint: 'auto' adapts each endpoint's limit to its "
        "latency, a number fixes it. Inputs in flight stay under half the server's permits "
        "either way.",
    ),
    click.option(
        "--normalize/--no-normalize",
        default=default(EmbedOptions, "normalize"),
        show_default=True,
        envvar="EMBEDDER_NORMALIZE",
    ),
    click.option(
        "--truncate/--no-truncate",
        default=default(EmbedOptions, "truncate"),
        envvar="EMBEDDER_TRUNCATE",
        help="Truncate over-long inputs. [default: the server's --auto-truncate]",
    ),
    click.option(
        "--request-timeout",
        default=default(FleetSettings, "request_timeout_s"),
        show_default=True,
        type=POSITIVE_SECONDS,
        envvar="EMBEDDER_REQUEST_TIMEOUT",
    ),
    click.option(
        "--outage-timeout",
        default=default(RetryPolicy, "outage_timeout_s"),
        show_default=True,
        type=SECONDS_OR_ZERO,
        envvar="EMBEDDER_OUTAGE_TIMEOUT",
        help="Seconds the worker waits out a fleet outage before exiting non-zero.",
    ),
    click.option(
        "--model-revision",
        envvar="EMBEDDER_MODEL_REVISION",
        help="Name of the model files' revision where the server reports none (vLLM, "
        "Infinity, a TEI serving a local directory), or a qualifier of the one it reports "
        "(TEI's --pooling or --default-prompt): recorded in the embed key, marks and shards. "
        "Change it whenever the files or those settings change.",
    ),
    click.option(
        "--openai-model",
        envvar="EMBEDDER_OPENAI_MODEL",
        help="The model to ask an OpenAI-compatible server for, where it lists several.",
    ),
    click.option(
        "--wait-for-servers",
        default=default(FleetSettings, "wait_for_servers_s"),
        show_default=True,
        type=SECONDS_OR_ZERO,
        envvar="EMBEDDER_WAIT_FOR_SERVERS",
        help="Seconds to wait at start for a server to answer /health (TEI downloading its "
        "model), logging the wait; 0: start at once, and exit when none answers.",
    ),
)


def _shards(
    *, output_dir: str | None, hot_dir: Path, shard_rows: int, shard_age: float, spec: QueueSpec
) -> ShardSettings:
    return ShardSettings(
        cold_uri=absolute(output_dir or default_dirs(spec)[0]),
        hot_dir=hot_dir,
        max_rows=shard_rows,
        max_age_s=shard_age,
        prefix=spec.target_field,
    )


shard_options = options_group(
    "shards",
    _shards,
    click.option(
        "--output-dir",
        envvar="EMBEDDER_OUTPUT_DIR",
        help="Cold storage for shards: a path or a pyarrow.fs URI (s3://, gs://). [default: "
        + DIRS_HELP.format("shards", "shards")
        + "]",
    ),
    click.option(
        "--hot-dir",
        default=DEFAULT_HOT_DIR,
        show_default=True,
        envvar="EMBEDDER_HOT_DIR",
        type=click.Path(file_okay=False, path_type=Path, resolve_path=True),
        help="Local directory where shards grow.",
    ),
    click.option(
        "--shard-rows",
        default=default(ShardSettings, "max_rows"),
        show_default=True,
        type=AT_LEAST_ONE,
        envvar="EMBEDDER_SHARD_ROWS",
    ),
    click.option(
        "--shard-age",
        default=default(ShardSettings, "max_age_s"),
        show_default=True,
        type=POSITIVE_SECONDS,
        envvar="EMBEDDER_SHARD_AGE",
        help="Seconds before an open shard is closed and its docs marked.",
    ),
    context=["spec"],
)


def _worker(
    *, once: bool, poll_interval: float, drain_timeout: float, log_interval: float
) -> WorkerSettings:
    return WorkerSettings(
        once=once,
        poll_interval_s=poll_interval,
        drain_timeout_s=drain_timeout,
        log_interval_s=log_interval,
    )


worker_options = options_group(
    "worker",
    _worker,
    click.option(
        "--once", is_flag=True, envvar="EMBEDDER_ONCE", help="Exit when nothing is pending."
    ),
    click.option(
        "--poll-interval",
        default=default(WorkerSettings, "poll_interval_s"),
        show_default=True,
        type=POSITIVE_SECONDS,
        envvar="EMBEDDER_POLL_INTERVAL",
        help="Seconds between looks for new docs when the queue is empty.",
    ),
    click.option(
        "--drain-timeout",
        default=default(WorkerSettings, "drain_timeout_s"),
        show_default=True,
        type=SECONDS_OR_ZERO,
        envvar="EMBEDDER_DRAIN_TIMEOUT",
        help="On SIGTERM/SIGINT: seconds to finish requests in flight before giving them up; "
        "what is done is then written and marked, every lease released, exit 0. Keep it under "
        "the orchestrator's grace period (compose: 2 minutes) with room for the last shard.",
    ),
    click.option(
        "--log-interval",
        default=default(WorkerSettings, "log_interval_s"),
        show_default=True,
        type=POSITIVE_SECONDS,
        envvar="EMBEDDER_LOG_INTERVAL",
        help="Seconds between progress log lines (docs embedded, docs durable, rate, ETA).",
    ),
)


def _work_queue(
    *, claim_size: int, lease_ttl: float, mongo_outage_timeout: float
) -> WorkQueueSettings:
    return WorkQueueSettings(
        claim_size=claim_size, lease_ttl_s=lease_ttl, outage_timeout_s=mongo_outage_timeout
    )


work_queue_options = options_group(
    "work_queue",
    _work_queue,
    click.option(
        "--claim-size",
        default=default(WorkQueueSettings, "claim_size"),
        show_default=True,
        type=AT_LEAST_ONE,
        envvar="EMBEDDER_CLAIM_SIZE",
        help="Docs per lease.",
    ),
    click.option(
        "--lease-ttl",
        default=default(WorkQueueSettings, "lease_ttl_s"),
        show_default=True,
        type=click.FloatRange(min=1),
        envvar="EMBEDDER_LEASE_TTL",
        help="Seconds before a silent worker's leases may be taken over (at least 1).",
    ),
    click.option(
        "--mongo-outage-timeout",
        default=default(WorkQueueSettings, "outage_timeout_s"),
        show_default=True,
        type=SECONDS_OR_ZERO,
        envvar="EMBEDDER_MONGO_OUTAGE_TIMEOUT",
        help="Seconds the worker waits for MongoDB to come back before exiting non-zero.",
    ),
)


def _reuse(*, reuse_texts: bool, vector_cache_size: int, store_text_hash: bool) -> ReuseSettings:
    del store_text_hash  # every mark keeps its text's hash now; the flag stays for old scripts
    return ReuseSettings(enabled=reuse_texts, vector_cache_bytes=vector_cache_size)


reuse_options = options_group(
    "reuse",
    _reuse,
    click.option(
        "--reuse-texts/--no-reuse-texts",
        default=default(ReuseSettings, "enabled"),
        show_default=True,
        envvar="EMBEDDER_REUSE_TEXTS",
        help="Send each distinct text to the fleet once; equal texts share its vector.",
    ),
    click.option(
        "--vector-cache-size",
        default=size_text(default(ReuseSettings, "vector_cache_bytes")),
        show_default=True,
        type=BYTE_SIZE,
        envvar="EMBEDDER_VECTOR_CACHE_SIZE",
        help="Vectors kept across runs in the hot dir (SQLite, per model), as 4G or 512M; 0: none.",
    ),
    click.option(
        "--store-text-hash",
        is_flag=True,
        hidden=True,
        envvar="EMBEDDER_STORE_TEXT_HASH",
        help="Accepted for compatibility: every mark now keeps its text's hash.",
    ),
)


def _changes(*, watch_changes: bool, changes_poll_interval: float) -> ChangeWatchSettings | None:
    return ChangeWatchSettings(changes_poll_interval) if watch_changes else None


change_options = options_group(
    "changes",
    _changes,
    click.option(
        "--watch-changes",
        is_flag=True,
        envvar="EMBEDDER_WATCH_CHANGES",
        help="Without --once: re-queue docs whose text changes (a change stream on a replica "
        "set, else polling). Implies --store-text-hash.",
    ),
    click.option(
        "--changes-poll-interval",
        default=default(ChangeWatchSettings, "poll_interval_s"),
        show_default=True,
        type=POSITIVE_SECONDS,
        envvar="EMBEDDER_CHANGES_POLL_INTERVAL",
        help="Where change streams are not available: seconds between passes over the "
        "embedded docs' text hashes (each pass reads 1,000 docs at a time).",
    ),
)


def _metrics(*, metrics_port: int | None, metrics_host: str) -> MetricsSettings | None:
    return None if metrics_port is None else MetricsSettings(metrics_port, metrics_host)


metrics_options = options_group(
    "metrics",
    _metrics,
    click.option(
        "--metrics-port",
        type=click.IntRange(0, 65535),
        envvar="EMBEDDER_METRICS_PORT",
        help="Serve Prometheus metrics.",
    ),
    click.option(
        "--metrics-host",
        default=default(MetricsSettings, "host"),
        show_default=True,
        envvar="EMBEDDER_METRICS_HOST",
    ),
)


summary_json_option = click.option(
    "--summary-json",
    type=WRITABLE_FILE,
    envvar="EMBEDDER_SUMMARY_JSON",
    help="Write the run summary as JSON here.",
)


@click.command()
@queue_options
@fleet_options
@shard_options
@worker_options
@work_queue_options
@reuse_options
@change_options
@metrics_options
@summary_json_option
@click.option(
    "--processes",
    default="1",
    show_default=True,
    type=PROCESS_COUNT,
    envvar="EMBEDDER_PROCESSES",
    help="Worker processes on this queue, each bound by one core: for a host whose servers "
    "(several fast GPUs) outrun one worker. 'auto': one per usable core. One metrics "
    "endpoint, progress display and summary for all.",
)
@click.pass_context
def embed(
    ctx: click.Context,
    *,
    spec: QueueSpec,
    mongo_uri: str,
    fleet: FleetSettings,
    shards: ShardSettings,
    worker: WorkerSettings,
    work_queue: WorkQueueSettings,
    reuse: ReuseSettings,
    changes: ChangeWatchSettings | None,
    metrics: MetricsSettings | None,
    summary_json: Path | None,
    processes: int,
) -> None:
    """Embed pending docs of a collection into Parquet shards and mark them done."""
    try:
        job = EmbedJob(
            mongo_uri,
            spec,
            fleet,
            shards,
            worker=worker,
            work_queue=work_queue,
            reuse=reuse,
            changes=changes,
            metrics=metrics,
        )
    except EmbedderError as exc:  # what no one stage can check alone
        raise click.UsageError(str(exc)) from None
    failures.writable_dir(shards.hot_dir, "--hot-dir")
    if processes > 1:
        from embedder.cli.processes import embed_in_processes

        result = embed_in_processes(job, processes)
        click.echo("\n".join(result.summary.lines()), err=True)
        write_json(summary_json, result.summary, "--summary-json")
        ctx.exit(result.exit_code)
    summary = run(run_embed(job), mongo_uri, job.fleet.api_key)
    if not logs.json_lines_on():  # JSON lines carry the summary already: stderr stays JSON
        click.echo("\n".join(summary.lines()), err=True)
    write_json(summary_json, summary, "--summary-json")


@click.command()
@queue_options
def indexes(*, spec: QueueSpec, mongo_uri: str) -> None:
    """Create the work-queue and monitoring indexes (idempotent)."""
    names = run(with_mongo(mongo_uri, lambda client: mongo.ensure_indexes(client, spec)), mongo_uri)
    click.echo(f"indexes ready on {spec.database}.{spec.collection}: {', '.join(names)}")


@click.command()
@queue_options
def pause(*, spec: QueueSpec, mongo_uri: str) -> None:
    """Stop every worker of this queue from claiming; what they hold is finished and marked."""
    _set_paused(spec, mongo_uri, paused=True)


@click.command()
@queue_options
def resume(*, spec: QueueSpec, mongo_uri: str) -> None:
    """Let the workers of this queue claim again."""
    _set_paused(spec, mongo_uri, paused=False)


def _set_paused(spec: QueueSpec, mongo_uri: str, *, paused: bool) -> None:
    from embedder.queue.work_queue import set_paused

    by = f"{os.environ.get('USER', 'someone')}@{socket.gethostname()}"
    changed = run(
        with_mongo(mongo_uri, lambda client: set_paused(client, spec, paused=paused, by=by)),
        mongo_uri,
    )
    state = "paused" if paused else "resumed"
    click.echo(f"queue {spec.key}: {state}" + ("" if changed else " (it already was)"))


COMMANDS = (embed, indexes, pause, resume)

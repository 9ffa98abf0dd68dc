"""The ``embedder`` command line: parses options, builds settings, delegates. Nothing else.

Every option has a default and an ``EMBEDDER_*`` environment variable; secrets (the Mongo
URI's password, the TEI API key) can come from the environment or a file, not only argv.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import click
from pymongo import AsyncMongoClient

from embedder import __version__, logs
from embedder.errors import ConfigurationError, EmbedderError
from embedder.fleet import tei_protocol
from embedder.fleet.routing import FleetSettings, RetryPolicy
from embedder.queue import connection as mongo
from embedder.queue.spec import (
    DEFAULT_DATABASE,
    DEFAULT_EXCLUDE,
    DEFAULT_FILTER,
    DEFAULT_TARGET_FIELD,
    DEFAULT_TEXT_FIELD,
    QueueSpec,
)
from embedder.storage.shards import ShardSettings
from embedder.worker.runner import EmbedJob, run_embed

log = logging.getLogger("embedder")

DEFAULT_MONGO_URI = "mongodb://localhost:27017"
# The seed queue (twitter_data.tweets into gemma_embedded_768) keeps the seed's directories;
# every other queue gets its own (default_dirs), so two queues never share an output.
DEFAULT_OUTPUT_DIR = "embeddings/shards"
DEFAULT_HOT_DIR = "embeddings/hot"
DEFAULT_CONSOLIDATED_DIR = "embeddings/consolidated"
SEED_COLLECTION = "tweets"
LEASE_HELD_EXIT = 4  # consolidate: another consolidator holds the output
_DIRS_HELP = (
    "embeddings/<database>/<collection>/<target field>/{}; embeddings/{} for the seed queue"
)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(_ctx: click.Context, _param: click.Parameter, value: str | int) -> int:
    """'1G', '512MiB', '200MB' or a plain number of bytes (units are powers of 1024)."""
    text = str(value).strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1:] if text[-1:] in _SIZE_UNITS else ""
    number = text[: len(text) - len(unit)]
    try:
        size = int(float(number) * _SIZE_UNITS[unit])
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a size such as 1G or 512M") from exc
    if size < 0:
        raise click.BadParameter(f"{value!r}: a size cannot be negative")
    return size


def _json_object(
    _ctx: click.Context, param: click.Parameter, value: str | None
) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise click.BadParameter("must be a JSON object")
    return parsed


def _concurrency(_ctx: click.Context, _param: click.Parameter, value: str | int) -> int | None:
    """'auto' (None: adaptive) or a positive number of requests."""
    if str(value).strip().lower() == "auto":
        return None
    try:
        number = int(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is neither 'auto' nor a number") from exc
    if number < 1:
        raise click.BadParameter("must be at least 1")
    return number


# Ranges of the embed command's numbers: a zero or negative value is refused before any work,
# with click's one-line error naming the option.
_AT_LEAST_ONE = click.IntRange(min=1)
_POSITIVE_SECONDS = click.FloatRange(min=0, min_open=True)
_SECONDS_OR_ZERO = click.FloatRange(min=0)


_QUEUE_PARAMS = ("collection", "database", "queue_filter", "exclude", "text_field", "target_field")


def queue_options(func: Any) -> Any:
    """Options that name a work queue; the command receives them as one ``spec: QueueSpec``."""

    @functools.wraps(func)
    def with_spec(**kwargs: Any) -> Any:
        try:
            spec = _spec(*(kwargs.pop(name) for name in _QUEUE_PARAMS))
        except ConfigurationError as exc:
            raise click.UsageError(str(exc)) from None
        return func(spec=spec, **kwargs)

    options = [
        click.option(
            "--collection",
            required=True,
            envvar="EMBEDDER_COLLECTION",
            help="Collection holding the texts.",
        ),
        click.option(
            "--mongo-uri",
            default=DEFAULT_MONGO_URI,
            show_default=True,
            envvar="EMBEDDER_MONGO_URI",
            help="MongoDB URI; TLS and auth options go in it. Prefer the environment for passwords.",
        ),
        click.option(
            "--database", default=DEFAULT_DATABASE, show_default=True, envvar="EMBEDDER_DATABASE"
        ),
        click.option(
            "--filter",
            "queue_filter",
            callback=_json_object,
            envvar="EMBEDDER_FILTER",
            help=f"Queue filter as JSON; its fields lead the index. [default: {json.dumps(DEFAULT_FILTER)}]",
        ),
        click.option(
            "--exclude",
            callback=_json_object,
            envvar="EMBEDDER_EXCLUDE",
            help=f"Extra partial-filter predicates as JSON. [default: {json.dumps(DEFAULT_EXCLUDE)}]",
        ),
        click.option(
            "--text-field",
            default=DEFAULT_TEXT_FIELD,
            show_default=True,
            envvar="EMBEDDER_TEXT_FIELD",
            help="Field holding the text; dotted paths such as extended_tweet.full_text work.",
        ),
        click.option(
            "--target-field",
            default=DEFAULT_TARGET_FIELD,
            show_default=True,
            envvar="EMBEDDER_TARGET_FIELD",
            help="Field that marks a doc done (or failed).",
        ),
    ]
    for option in reversed(options):
        with_spec = option(with_spec)
    return with_spec


def _spec(
    collection: str,
    database: str,
    queue_filter: dict[str, Any] | None,
    exclude: dict[str, Any] | None,
    text_field: str,
    target_field: str,
) -> QueueSpec:
    return QueueSpec(
        collection=collection,
        database=database,
        filter=DEFAULT_FILTER if queue_filter is None else queue_filter,
        exclude=DEFAULT_EXCLUDE if exclude is None else exclude,
        text_field=text_field,
        target_field=target_field,
    )


def _secret(value: str | None, path: Path | None, what: str) -> str | None:
    if value and path:
        raise click.UsageError(f"give the {what} or its file, not both")
    if path:
        return path.read_text(encoding="utf-8").strip()
    return value


def tei_endpoints(func: Any) -> Any:
    """The fleet's URLs and API key; the command receives ``urls`` and ``api_key``."""

    @functools.wraps(func)
    def with_endpoints(
        tei_urls: str, tei_api_key: str | None, tei_api_key_file: Path | None, **kwargs: Any
    ) -> Any:
        urls = tuple(u for u in (x.strip() for x in tei_urls.split(",")) if u)
        api_key = _secret(tei_api_key, tei_api_key_file, "TEI API key")
        return func(urls=urls, api_key=api_key, **kwargs)

    options = [
        click.option(
            "--tei-urls",
            required=True,
            envvar="EMBEDDER_TEI_URLS",
            help="Comma-separated TEI endpoints, with or without the /embed path.",
        ),
        click.option(
            "--tei-api-key",
            envvar="EMBEDDER_TEI_API_KEY",
            help="Sent as 'Authorization: Bearer'.",
        ),
        click.option(
            "--tei-api-key-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            envvar="EMBEDDER_TEI_API_KEY_FILE",
        ),
    ]
    for option in reversed(options):
        with_endpoints = option(with_endpoints)
    return with_endpoints


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="embedder")
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    envvar="EMBEDDER_LOG_LEVEL",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option("--log-json", is_flag=True, envvar="EMBEDDER_LOG_JSON", help="Log JSON lines.")
def cli(log_level: str, log_json: bool) -> None:
    """Embed MongoDB text collections on a TEI fleet into Parquet, crash-safely."""
    logs.configure(log_level, json_lines=log_json)


@cli.command()
@queue_options
@tei_endpoints
@click.option(
    "--batch-size",
    default=32,
    show_default=True,
    type=_AT_LEAST_ONE,
    envvar="EMBEDDER_BATCH_SIZE",
    help="Inputs per request (capped at the servers' max_client_batch_size).",
)
@click.option(
    "--concurrency",
    default="auto",
    show_default=True,
    callback=_concurrency,
    envvar="EMBEDDER_CONCURRENCY",
    help="Requests in flight per endpoint: 'auto' adapts each endpoint's limit to its latency,"
    " a number fixes it. Inputs in flight stay under half the server's permits either way.",
)
@click.option(
    "--output-dir",
    envvar="EMBEDDER_OUTPUT_DIR",
    help="Cold storage for shards: a path or a pyarrow.fs URI (s3://, gs://). [default: "
    + _DIRS_HELP.format("shards", "shards")
    + "]",
)
@click.option(
    "--hot-dir",
    default=DEFAULT_HOT_DIR,
    show_default=True,
    envvar="EMBEDDER_HOT_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Local directory where shards grow.",
)
@click.option(
    "--normalize/--no-normalize", default=True, show_default=True, envvar="EMBEDDER_NORMALIZE"
)
@click.option(
    "--truncate/--no-truncate",
    default=None,
    envvar="EMBEDDER_TRUNCATE",
    help="Truncate over-long inputs. [default: the server's --auto-truncate]",
)
@click.option("--once", is_flag=True, envvar="EMBEDDER_ONCE", help="Exit when nothing is pending.")
@click.option(
    "--claim-size",
    default=1000,
    show_default=True,
    type=_AT_LEAST_ONE,
    envvar="EMBEDDER_CLAIM_SIZE",
    help="Docs per lease.",
)
@click.option(
    "--lease-ttl",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=1),
    envvar="EMBEDDER_LEASE_TTL",
    help="Seconds before a silent worker's leases may be taken over (at least 1).",
)
@click.option(
    "--shard-rows",
    default=50_000,
    show_default=True,
    type=_AT_LEAST_ONE,
    envvar="EMBEDDER_SHARD_ROWS",
)
@click.option(
    "--shard-age",
    default=300.0,
    show_default=True,
    type=_POSITIVE_SECONDS,
    envvar="EMBEDDER_SHARD_AGE",
    help="Seconds before an open shard is closed and its docs marked.",
)
@click.option(
    "--poll-interval",
    default=5.0,
    show_default=True,
    type=_POSITIVE_SECONDS,
    envvar="EMBEDDER_POLL_INTERVAL",
    help="Seconds between looks for new docs when the queue is empty.",
)
@click.option(
    "--request-timeout",
    default=120.0,
    show_default=True,
    type=_POSITIVE_SECONDS,
    envvar="EMBEDDER_REQUEST_TIMEOUT",
)
@click.option(
    "--outage-timeout",
    default=900.0,
    show_default=True,
    type=_SECONDS_OR_ZERO,
    envvar="EMBEDDER_OUTAGE_TIMEOUT",
    help="Seconds the worker waits out a fleet outage before exiting non-zero.",
)
@click.option(
    "--model-revision",
    envvar="EMBEDDER_MODEL_REVISION",
    help="Name of the model files' revision where TEI reports none (a local model directory):"
    " recorded in the embed key, marks and shards. Change it whenever the files change.",
)
@click.option(
    "--mongo-outage-timeout",
    default=600.0,
    show_default=True,
    type=_SECONDS_OR_ZERO,
    envvar="EMBEDDER_MONGO_OUTAGE_TIMEOUT",
    help="Seconds the worker waits for MongoDB to come back before exiting non-zero.",
)
@click.option(
    "--drain-timeout",
    default=90.0,
    show_default=True,
    type=_SECONDS_OR_ZERO,
    envvar="EMBEDDER_DRAIN_TIMEOUT",
    help="On SIGTERM/SIGINT: seconds to finish requests in flight before giving them up; what "
    "is done is then written and marked, every lease released, exit 0. Keep it under the "
    "orchestrator's grace period (compose: 2 minutes) with room for the last shard.",
)
@click.option(
    "--reuse-texts/--no-reuse-texts",
    default=True,
    show_default=True,
    envvar="EMBEDDER_REUSE_TEXTS",
    help="Send each distinct text to the fleet once; equal texts share its vector.",
)
@click.option(
    "--vector-cache-size",
    default="4G",
    show_default=True,
    callback=_size,
    envvar="EMBEDDER_VECTOR_CACHE_SIZE",
    help="Vectors kept across runs in the hot dir (SQLite, per model), as 4G or 512M; 0: none.",
)
@click.option(
    "--store-text-hash",
    is_flag=True,
    hidden=True,
    envvar="EMBEDDER_STORE_TEXT_HASH",
    help="Accepted for compatibility: every mark now keeps its text's hash.",
)
@click.option(
    "--watch-changes",
    is_flag=True,
    envvar="EMBEDDER_WATCH_CHANGES",
    help="Without --once: re-queue docs whose text changes (a change stream on a replica set, "
    "else polling). Implies --store-text-hash.",
)
@click.option(
    "--changes-poll-interval",
    default=60.0,
    show_default=True,
    type=_POSITIVE_SECONDS,
    envvar="EMBEDDER_CHANGES_POLL_INTERVAL",
    help="Where change streams are not available: seconds between passes over the embedded "
    "docs' text hashes (each pass reads 1,000 docs at a time).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    envvar="EMBEDDER_METRICS_PORT",
    help="Serve Prometheus metrics.",
)
@click.option(
    "--metrics-host", default="127.0.0.1", show_default=True, envvar="EMBEDDER_METRICS_HOST"
)
@click.option(
    "--summary-json",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="EMBEDDER_SUMMARY_JSON",
    help="Write the run summary as JSON here.",
)
def embed(
    spec: QueueSpec,
    mongo_uri: str,
    urls: tuple[str, ...],
    api_key: str | None,
    batch_size: int,
    concurrency: int | None,
    output_dir: str | None,
    hot_dir: Path,
    normalize: bool,
    truncate: bool | None,
    once: bool,
    claim_size: int,
    lease_ttl: float,
    shard_rows: int,
    shard_age: float,
    poll_interval: float,
    request_timeout: float,
    outage_timeout: float,
    model_revision: str | None,
    mongo_outage_timeout: float,
    drain_timeout: float,
    reuse_texts: bool,
    vector_cache_size: int,
    store_text_hash: bool,  # always on now; the flag is kept for old scripts
    watch_changes: bool,
    changes_poll_interval: float,
    metrics_port: int | None,
    metrics_host: str,
    summary_json: Path | None,
) -> None:
    """Embed pending docs of a collection into Parquet shards and mark them done."""
    try:
        job = EmbedJob(
            mongo_uri=mongo_uri,
            queue=spec,
            fleet=FleetSettings(
                urls=urls,
                options=tei_protocol.EmbedOptions(normalize=normalize, truncate=truncate),
                batch_size=batch_size,
                concurrency=concurrency,
                api_key=api_key,
                request_timeout_s=request_timeout,
                retry=RetryPolicy(outage_timeout_s=outage_timeout),
                model_revision=model_revision,
            ),
            shards=ShardSettings(
                cold_uri=output_dir or default_dirs(spec)[0],
                hot_dir=hot_dir,
                max_rows=shard_rows,
                max_age_s=shard_age,
                prefix=spec.target_field,
            ),
            once=once,
            claim_size=claim_size,
            lease_ttl_s=lease_ttl,
            poll_interval_s=poll_interval,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            mongo_outage_timeout_s=mongo_outage_timeout,
            reuse_texts=reuse_texts,
            vector_cache_bytes=vector_cache_size,
            drain_timeout_s=drain_timeout,
            watch_changes=watch_changes,
            changes_poll_interval_s=changes_poll_interval,
        )
    except EmbedderError as exc:  # the settings objects' own checks
        raise click.UsageError(str(exc)) from None
    summary = _run(run_embed(job), mongo_uri, api_key).as_dict()
    if summary_json:
        summary_json.write_text(json.dumps(summary, indent=2))
    click.echo(_summary_lines(summary), err=True)


@cli.command()
@queue_options
def indexes(
    spec: QueueSpec,
    mongo_uri: str,
) -> None:
    """Create the work-queue and monitoring indexes (idempotent)."""
    names = _run(
        _with_mongo(mongo_uri, lambda client: mongo.ensure_indexes(client, spec)), mongo_uri
    )
    click.echo(f"indexes ready on {spec.database}.{spec.collection}: {', '.join(names)}")


def default_dirs(spec: QueueSpec | None) -> tuple[str, str]:
    """The shards and consolidated directories of a queue when none are given."""
    seed = (DEFAULT_DATABASE, SEED_COLLECTION, DEFAULT_TARGET_FIELD)
    if spec is None or (spec.database, spec.collection, spec.target_field) == seed:
        return DEFAULT_OUTPUT_DIR, DEFAULT_CONSOLIDATED_DIR
    parts = (spec.database, spec.collection, spec.target_field)
    base = "/".join(["embeddings", *(p.replace("/", "_") for p in parts)])
    return f"{base}/shards", f"{base}/consolidated"


def _dirs(spec: QueueSpec | None, shards: str | None, consolidated: str | None) -> tuple[str, str]:
    default_shards, default_consolidated = default_dirs(spec)
    return shards or default_shards, consolidated or default_consolidated


def consolidation_dirs(func: Any) -> Any:
    func = click.option(
        "--consolidated-dir",
        envvar="EMBEDDER_CONSOLIDATED_DIR",
        help="Where the large files go: a path or a pyarrow.fs URI. [default: "
        + _DIRS_HELP.format("consolidated", "consolidated")
        + "]",
    )(func)
    return click.option(
        "--shards-dir",
        envvar=["EMBEDDER_SHARDS_DIR", "EMBEDDER_OUTPUT_DIR"],
        help="The shards the embedder wrote. [default: "
        + _DIRS_HELP.format("shards", "shards")
        + "]",
    )(func)


def queue_naming_options(func: Any) -> Any:
    """Optional options naming a queue (no MongoDB needed); the command receives
    ``spec: QueueSpec | None``, None when no --collection is given."""

    @functools.wraps(func)
    def with_spec(
        collection: str | None,
        database: str,
        queue_filter: dict[str, Any] | None,
        exclude: dict[str, Any] | None,
        target_field: str,
        **kwargs: Any,
    ) -> Any:
        spec = None
        if collection is not None:
            try:
                spec = _spec(
                    collection, database, queue_filter, exclude, DEFAULT_TEXT_FIELD, target_field
                )
            except ConfigurationError as exc:
                raise click.UsageError(str(exc)) from None
        return func(spec=spec, **kwargs)

    options = [
        click.option(
            "--collection",
            envvar="EMBEDDER_COLLECTION",
            help="The queue whose shards these are: its directories by default, and only its "
            "shards are taken. [default: the seed queue, without a check]",
        ),
        click.option(
            "--database", default=DEFAULT_DATABASE, show_default=True, envvar="EMBEDDER_DATABASE"
        ),
        click.option("--filter", "queue_filter", callback=_json_object, envvar="EMBEDDER_FILTER"),
        click.option("--exclude", callback=_json_object, envvar="EMBEDDER_EXCLUDE"),
        click.option(
            "--target-field",
            default=DEFAULT_TARGET_FIELD,
            show_default=True,
            envvar="EMBEDDER_TARGET_FIELD",
        ),
    ]
    for option in reversed(options):
        with_spec = option(with_spec)
    return with_spec


@cli.command()
@queue_naming_options
@consolidation_dirs
@click.option(
    "--target-file-size",
    default="1G",
    show_default=True,
    callback=_size,
    envvar="EMBEDDER_TARGET_FILE_SIZE",
    help="Size of each output file.",
)
@click.option(
    "--memory-limit",
    default="512M",
    show_default=True,
    callback=_size,
    envvar="EMBEDDER_MEMORY_LIMIT",
    help="Peak memory for de-duplication and copying, whatever the input size.",
)
@click.option(
    "--retire",
    type=click.Choice(["delete", "move"]),
    default="delete",
    show_default=True,
    envvar="EMBEDDER_RETIRE",
    help="Merged shards: delete them, or move them to <shards-dir>/.retired.",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EMBEDDER_WORK_DIR",
    help="Local scratch space for spill files. [default: the system temp dir]",
)
@click.option(
    "--watch", is_flag=True, help="Keep consolidating new shards every --interval seconds."
)
@click.option(
    "--interval", default=300.0, show_default=True, envvar="EMBEDDER_CONSOLIDATE_INTERVAL"
)
@click.option(
    "--report-json",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the run report here.",
)
@click.option(
    "--lease-ttl",
    default=60.0,
    show_default=True,
    envvar="EMBEDDER_CONSOLIDATE_LEASE_TTL",
    help="Seconds the output's lease outlives a silent holder (it renews every third).",
)
@click.option(
    "--sole-consolidator",
    is_flag=True,
    envvar="EMBEDDER_SOLE_CONSOLIDATOR",
    help="On a store without a conditional create (gs://, other pyarrow filesystems): "
    "promise that no other consolidator writes this output; refused otherwise.",
)
def consolidate(
    spec: QueueSpec | None,
    shards_dir: str | None,
    consolidated_dir: str | None,
    target_file_size: int,
    memory_limit: int,
    retire: str,
    work_dir: Path | None,
    watch: bool,
    interval: float,
    report_json: Path | None,
    lease_ttl: float,
    sole_consolidator: bool,
) -> None:
    """Merge shards into large, de-duplicated, verified Parquet files with a manifest.

    One consolidator commits to an output at a time: another one holding it makes this one
    exit 4 naming the holder, or wait for it with --watch.
    """
    from embedder.storage.consolidate import ConsolidateSettings, Consolidator
    from embedder.storage.output_lease import LeaseHeld

    shards_dir, consolidated_dir = _dirs(spec, shards_dir, consolidated_dir)
    try:
        settings = ConsolidateSettings(
            shards_uri=shards_dir,
            output_uri=consolidated_dir,
            target_file_bytes=target_file_size,
            memory_limit_bytes=memory_limit,
            retire="move" if retire == "move" else "delete",
            work_dir=work_dir,
            queue=spec.key if spec else None,
            lease_ttl_s=lease_ttl,
            sole_consolidator=sole_consolidator,
        )
    except ConfigurationError as exc:
        raise click.ClickException(f"configuration: {exc}") from None
    stop = _stop_flag() if watch else None
    bad_shards = False
    while True:
        try:
            report = Consolidator(settings).run()
        except LeaseHeld as held:
            if stop is None:
                click.echo(f"consolidate: {held}", err=True)
                sys.exit(LEASE_HELD_EXIT)
            log.warning("%s; waiting", held)
        except EmbedderError as exc:
            raise click.ClickException(str(exc)) from None
        else:
            bad_shards = bool(report.bad_shards)
            _report_consolidation(report, report_json)
        if stop is None or stop.wait(interval):
            break
    if bad_shards and not watch:
        sys.exit(3)


def _report_consolidation(report: Any, report_json: Path | None) -> None:
    if report_json:
        report_json.write_text(json.dumps(report.as_dict(), indent=2))
    click.echo(
        f"consolidated {len(report.sources)} shards: {report.rows_in} rows in, {report.rows_out} out, "
        f"{report.duplicates_dropped} duplicates dropped, {len(report.files)} files written "
        f"({report.elapsed_s}s)",
        err=True,
    )
    for name, reason in report.bad_shards.items():
        click.echo(f"  left in place: {name}: {reason}", err=True)


@cli.command()
@queue_options
@consolidation_dirs
@click.option(
    "--memory-limit",
    default="512M",
    show_default=True,
    callback=_size,
    envvar="EMBEDDER_MEMORY_LIMIT",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--doc",
    "doc_ids",
    multiple=True,
    help='Only say which model embedded this doc (an id: 42, abc, {"$oid": ...}) and check its '
    "row; repeatable. Exit 1 when a doc is not found or its row is missing, or from another "
    "model than its mark or another text than it holds now; 3 when MongoDB is unreachable.",
)
def verify(
    spec: QueueSpec,
    mongo_uri: str,
    shards_dir: str | None,
    consolidated_dir: str | None,
    memory_limit: int,
    as_json: bool,
    doc_ids: tuple[str, ...],
) -> None:
    """Check the consolidated output against MongoDB.

    OK: every doc marked done is in the output exactly once, with the row its mark names
    (model, embed key, text hash where the mark keeps one), and no row is unexplained.
    Pending and failed docs are counted. With --doc, show the lineage of those docs instead:
    their mark, their rows in the output and the shards, and whether the row is the one the
    mark names and the text the doc holds now.

    \b
    Exit codes:
      0  OK
      1  FAILED: a discrepancy (missing, duplicate, unexplained or stale rows, bad vectors)
      2  usage error
      3  COULD NOT CHECK: MongoDB unreachable, no output, output of another queue or model
      4  NOTHING TO VERIFY: no doc is marked done and the output holds no rows
    """
    from embedder.ops.verify import VerifyReport
    from embedder.ops.verify import verify as run_verify

    shards_dir, consolidated_dir = _dirs(spec, shards_dir, consolidated_dir)

    if doc_ids:
        _show_lineage(spec, mongo_uri, shards_dir, consolidated_dir, doc_ids, as_json=as_json)
        return

    try:
        report = _event_loop_runner()(
            _with_mongo(
                mongo_uri,
                lambda client: run_verify(
                    client,
                    spec,
                    consolidated_dir,
                    shards_uri=shards_dir,
                    memory_limit=memory_limit,
                ),
            )
        )
    except EmbedderError as exc:
        # Whatever stopped the check is not a verdict on the data: its own exit code.
        report = VerifyReport.cannot(mongo.scrub(str(exc), mongo_uri))
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else "\n".join(report.lines()))
    sys.exit(report.verdict.value)


@cli.command()
@queue_options
@consolidation_dirs
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option(
    "--watch", "watch_s", type=float, default=None, help="Refresh every N seconds until Ctrl-C."
)
def status(
    spec: QueueSpec,
    mongo_uri: str,
    shards_dir: str | None,
    consolidated_dir: str | None,
    as_json: bool,
    watch_s: float | None,
) -> None:
    """Pending, done and failed docs, rate and ETA, workers and leases, consolidation."""
    from embedder.ops.status import collect

    shards_dir, consolidated_dir = _dirs(spec, shards_dir, consolidated_dir)

    stop = _stop_flag() if watch_s else None
    while True:
        current = _run(
            _with_mongo(
                mongo_uri,
                lambda client: collect(
                    client, spec, consolidated_uri=consolidated_dir, shards_uri=shards_dir
                ),
            ),
            mongo_uri,
        )
        text = json.dumps(current.as_dict(), indent=2) if as_json else "\n".join(current.lines())
        if stop is not None and not as_json:
            click.clear()
        click.echo(text)
        if stop is None or watch_s is None or stop.wait(watch_s):
            break


def _numbers(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        numbers = tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from exc
    if not numbers or min(numbers) < 1:
        raise click.BadParameter("give positive numbers, such as 8,16,32")
    return numbers


@cli.command()
@tei_endpoints
@click.option("--collection", envvar="EMBEDDER_COLLECTION", help="Sample texts from it.")
@click.option(
    "--mongo-uri", default=DEFAULT_MONGO_URI, show_default=True, envvar="EMBEDDER_MONGO_URI"
)
@click.option("--database", default=DEFAULT_DATABASE, show_default=True, envvar="EMBEDDER_DATABASE")
@click.option(
    "--text-field", default=DEFAULT_TEXT_FIELD, show_default=True, envvar="EMBEDDER_TEXT_FIELD"
)
@click.option(
    "--file",
    "texts_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Texts from a file instead: one per line, or JSON lines with --text-field.",
)
@click.option("--sample", default=2000, show_default=True, help="How many texts to sample.")
@click.option("--batch-sizes", default="8,16,32", show_default=True, callback=_numbers)
@click.option(
    "--concurrency-levels",
    default="1,2,4,8,16,32,64,128,256",
    show_default=True,
    callback=_numbers,
    help="Requests in flight across the whole fleet.",
)
@click.option("--warmup", default=5.0, show_default=True, help="Seconds before each cell counts.")
@click.option("--duration", default=20.0, show_default=True, help="Seconds measured per cell.")
@click.option("--p95-slo", default=10.0, show_default=True, help="Seconds.")
@click.option(
    "--early-stop/--no-early-stop",
    default=True,
    show_default=True,
    help="End a row once throughput has plateaued and latency only grows.",
)
@click.option(
    "--report",
    default="autotune-report",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Writes REPORT.json and REPORT.md.",
)
def autotune(
    urls: tuple[str, ...],
    api_key: str | None,
    collection: str | None,
    mongo_uri: str,
    database: str,
    text_field: str,
    texts_file: Path | None,
    sample: int,
    batch_sizes: tuple[int, ...],
    concurrency_levels: tuple[int, ...],
    warmup: float,
    duration: float,
    p95_slo: float,
    early_stop: bool,
    report: Path,
) -> None:
    """Sweep batch size x concurrency against the fleet; name the best setting for an SLO.

    Exits 1 when no setting meets the SLO without errors (the report says what to change).
    """
    from tqdm import tqdm

    from embedder.ops import autotune as tuning
    from embedder.ops.autotune_inputs import texts_from_collection, texts_from_file

    if (texts_file is None) == (collection is None):
        raise click.UsageError("give --collection to sample texts from, or --file")
    try:
        settings = tuning.SweepSettings(
            batch_sizes=batch_sizes,
            concurrencies=concurrency_levels,
            warmup_s=warmup,
            duration_s=duration,
            p95_slo_s=p95_slo,
            early_stop=early_stop,
        )
        texts = texts_from_file(texts_file, text_field, sample) if texts_file else []
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    if collection is not None:
        texts = _run(
            _with_mongo(
                mongo_uri,
                lambda client: texts_from_collection(
                    client, database, collection, text_field, sample
                ),
            ),
            mongo_uri,
        )
    cells = len(batch_sizes) * len(concurrency_levels)
    with tqdm(total=cells, unit="cell", disable=not sys.stderr.isatty(), desc="autotune") as bar:

        def shown(cell: tuning.Cell) -> None:
            bar.update(1)
            bar.set_postfix_str(
                f"batch {cell.batch_size} x {cell.concurrency}: {cell.docs_per_s:,.0f} docs/s, "
                f"p95 {cell.p95_s:.2f}s"
            )
            if bar.disable:
                log.info(
                    "autotune batch %d x %d: %.1f docs/s, p95 %.3f s, %d errors",
                    cell.batch_size,
                    cell.concurrency,
                    cell.docs_per_s,
                    cell.p95_s,
                    cell.errors,
                )

        result = _run(tuning.sweep(urls, texts, settings, api_key=api_key, on_cell=shown), api_key)
    markdown = tuning.report_markdown(result)
    report.with_suffix(".json").write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    report.with_suffix(".md").write_text(markdown)
    click.echo(markdown)
    click.echo(f"wrote {report.with_suffix('.json')} and {report.with_suffix('.md')}")
    if result.best is None:
        sys.exit(1)


def _show_lineage(
    spec: QueueSpec,
    mongo_uri: str,
    shards_dir: str,
    consolidated_dir: str,
    doc_ids: tuple[str, ...],
    *,
    as_json: bool,
) -> None:
    from embedder.ops.lineage import lineage, parse_doc_id
    from embedder.ops.verify import VerifyReport

    async def collect(client: AsyncMongoClient[dict[str, Any]]) -> list[Any]:
        return [
            await lineage(
                client,
                spec,
                parse_doc_id(value),
                consolidated_uri=consolidated_dir,
                shards_uri=shards_dir,
            )
            for value in doc_ids
        ]

    try:
        found = _event_loop_runner()(_with_mongo(mongo_uri, collect))
    except EmbedderError as exc:
        report = VerifyReport.cannot(mongo.scrub(str(exc), mongo_uri))
        click.echo(json.dumps(report.as_dict()) if as_json else "\n".join(report.lines()))
        sys.exit(report.verdict.value)
    if as_json:
        click.echo(json.dumps([f.as_dict() for f in found], indent=2))
    else:
        click.echo("\n".join(line for f in found for line in f.lines()))
    if not all(f.ok for f in found):
        sys.exit(1)


@cli.command()
@queue_options
def pause(spec: QueueSpec, mongo_uri: str) -> None:
    """Stop every worker of this queue from claiming; what they hold is finished and marked."""
    _set_paused(spec, mongo_uri, paused=True)


@cli.command()
@queue_options
def resume(spec: QueueSpec, mongo_uri: str) -> None:
    """Let the workers of this queue claim again."""
    _set_paused(spec, mongo_uri, paused=False)


def _set_paused(spec: QueueSpec, mongo_uri: str, *, paused: bool) -> None:
    from embedder.queue.work_queue import set_paused

    by = f"{os.environ.get('USER', 'someone')}@{socket.gethostname()}"
    changed = _run(
        _with_mongo(mongo_uri, lambda client: set_paused(client, spec, paused=paused, by=by)),
        mongo_uri,
    )
    state = "paused" if paused else "resumed"
    click.echo(f"queue {spec.key}: {state}" + ("" if changed else " (it already was)"))


@cli.command()
@queue_options
@click.option("--model", help="Docs embedded by this model_id (or model_id@model_sha).")
@click.option("--failed", is_flag=True, help="Docs that failed.")
@click.option("--reason", help="With --failed: only reasons containing this text.")
@click.option(
    "--changed-text",
    is_flag=True,
    help="Docs whose text changed since it was embedded (needs --store-text-hash marks).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be re-queued; change nothing.")
@click.option("--batch-size", default=1000, show_default=True, help="Docs per update.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def requeue(
    spec: QueueSpec,
    mongo_uri: str,
    model: str | None,
    failed: bool,
    reason: str | None,
    changed_text: bool,
    dry_run: bool,
    batch_size: int,
    as_json: bool,
) -> None:
    """Put docs back in the work queue: by model, by failure reason, or by changed text."""
    from embedder.ops import requeue as requeuing

    try:
        selection = requeuing.Selection(
            model=model, failed=failed, reason=reason, changed_text=changed_text
        )
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    report = _run(
        _with_mongo(
            mongo_uri,
            lambda client: requeuing.requeue(
                client, spec, selection, dry_run=dry_run, batch_size=batch_size
            ),
        ),
        mongo_uri,
    )
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else "\n".join(report.lines()))


def _stop_flag() -> threading.Event:
    """Set by SIGINT/SIGTERM, so --watch finishes its current run and exits 0."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@cli.command()
@click.option(
    "--backend",
    type=click.Choice(["onnx", "hash", "torch"]),
    default="onnx",
    show_default=True,
    envvar="EMBEDDER_SERVE_BACKEND",
    help="onnx: all-MiniLM-L6-v2 int8 on the CPU. hash: deterministic, meaningless, for tests.",
)
@click.option(
    "--dimension",
    default=384,
    show_default=True,
    type=click.IntRange(min=1),
    help="Vector size of the hash backend.",
)
@click.option(
    "--simulate-batch-seconds",
    type=float,
    default=0.0,
    show_default=True,
    help="hash backend: model time per batch, to simulate a GPU (with the next option).",
)
@click.option(
    "--simulate-token-seconds",
    type=float,
    default=0.0,
    show_default=True,
    help="hash backend: model time per token of a batch.",
)
@click.option(
    "--model-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An ONNX file in place of the packaged model.",
)
@click.option(
    "--tokenizer-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A tokenizer.json in place of the packaged one.",
)
@click.option("--threads", default=0, show_default=True, help="Model threads (0: one per core).")
@click.option(
    "--model-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    envvar="EMBEDDER_SERVE_MODEL_DIR",
    help="torch backend: a local sentence-transformers model directory.",
)
@click.option("--device", help="torch backend: cuda, cuda:1, cpu... [default: cuda when present]")
@click.option(
    "--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), help="torch backend weights."
)
@click.option(
    "--hostname", default="127.0.0.1", show_default=True, envvar="EMBEDDER_SERVE_HOSTNAME"
)
@click.option(
    "--port",
    default=3000,
    show_default=True,
    envvar="EMBEDDER_SERVE_PORT",
    help="0 picks a free port.",
)
@click.option("--max-concurrent-requests", default=512, show_default=True)
@click.option("--max-batch-tokens", default=16384, show_default=True)
@click.option("--max-batch-requests", type=int, default=None)
@click.option("--max-client-batch-size", default=32, show_default=True)
@click.option("--auto-truncate/--no-auto-truncate", default=True, show_default=True)
@click.option("--payload-limit", default=2_000_000, show_default=True)
@click.option(
    "--api-key", envvar="EMBEDDER_SERVE_API_KEY", help="Require 'Authorization: Bearer <key>'."
)
def serve(
    backend: str,
    dimension: int,
    simulate_batch_seconds: float,
    simulate_token_seconds: float,
    model_file: Path | None,
    tokenizer_file: Path | None,
    threads: int,
    model_dir: Path | None,
    device: str | None,
    dtype: str | None,
    hostname: str,
    port: int,
    max_concurrent_requests: int,
    max_batch_tokens: int,
    max_batch_requests: int | None,
    max_client_batch_size: int,
    auto_truncate: bool,
    payload_limit: int,
    api_key: str | None,
) -> None:
    """Serve TEI's API with a model on this machine (flags and defaults as TEI's)."""
    from embedder.serve.main import ServerSettings, TeiServer, make_backend
    from embedder.serve.main import serve as run_server

    try:
        model = make_backend(
            backend,
            dimension=dimension,
            seconds_per_batch=simulate_batch_seconds,
            seconds_per_token=simulate_token_seconds,
            model_file=model_file,
            tokenizer_file=tokenizer_file,
            threads=threads,
            model_dir=model_dir,
            device=device,
            dtype=dtype,
        )
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    settings = ServerSettings(
        max_concurrent_requests=max_concurrent_requests,
        max_batch_tokens=max_batch_tokens,
        max_batch_requests=max_batch_requests,
        max_client_batch_size=max_client_batch_size,
        auto_truncate=auto_truncate,
        payload_limit=payload_limit,
        api_key=api_key,
    )
    run_server(TeiServer(model, settings), hostname, port)


@cli.command("dev-mongo")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=27017, show_default=True, help="0 picks a free port.")
@click.option(
    "--sqlite",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keep data in this SQLite file (default: in memory).",
)
@click.option(
    "--user", help="Require this user (SCRAM-SHA-256); password in EMBEDDER_DEV_MONGO_PASSWORD."
)
def dev_mongo(host: str, port: int, sqlite: Path | None, user: str | None) -> None:
    """Run an embedded MongoDB-compatible server (mongoeco) for demos and tests."""
    from embedder.devtools import devmongo

    password = os.environ.get("EMBEDDER_DEV_MONGO_PASSWORD")
    if user and not password:
        raise click.UsageError("--user needs its password in EMBEDDER_DEV_MONGO_PASSWORD")
    asyncio.run(devmongo.run(host, port, sqlite, user, password))


async def _with_mongo[T](
    mongo_uri: str, action: Callable[[AsyncMongoClient[dict[str, Any]]], Awaitable[T]]
) -> T:
    """Connect, check MongoDB answers, run ``action`` with the client, close."""
    client = mongo.connect(mongo_uri)
    try:
        await mongo.check_reachable(client, mongo_uri)
        return await action(client)
    finally:
        await client.close()


def _run[T](coroutine: Coroutine[Any, Any, T], *secrets: str | None) -> T:
    try:
        result: T = _event_loop_runner()(coroutine)
    except ConfigurationError as exc:
        message = logs.redact(mongo.scrub(str(exc), *secrets))
        raise click.ClickException("configuration: " + message) from None
    except EmbedderError as exc:
        raise click.ClickException(logs.redact(mongo.scrub(str(exc), *secrets))) from None
    return result


def _event_loop_runner() -> Any:
    try:
        import uvloop
    except ImportError:  # Windows, or a minimal install
        return asyncio.run
    return uvloop.run


def _summary_lines(summary: dict[str, Any]) -> str:
    lines = [
        f"embedded {summary['embedded']} docs in {summary['elapsed_s']}s ({summary['docs_per_s']} docs/s); "
        f"failed {summary['failed']}; requests {summary['requests']}, retries {summary['retries']}; "
        f"shards {summary['shards']} ({summary['shard_bytes']} bytes)",
    ]
    for reason, count in dict(summary["failure_reasons"]).items():
        lines.append(f"  failed x{count}: {reason}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="embedder")


if __name__ == "__main__":
    main(sys.argv[1:])

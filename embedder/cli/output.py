"""Commands for the output: ``consolidate`` the shards, ``verify`` the result against MongoDB."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
from pymongo import AsyncMongoClient

from embedder import logs
from embedder.cli.locating import given_dirs, output_dirs, record_consolidation
from embedder.cli.options import (
    Decorator,
    consolidation_dirs,
    default,
    queue_naming_options,
    queue_options,
)
from embedder.cli.running import event_loop_runner, stop_flag, with_mongo, write_json
from embedder.cli.types import BYTE_SIZE, DOC_ID, size_text
from embedder.errors import ConfigurationError, EmbedderError
from embedder.files.consolidate_outputs import (
    PartsReport,
    consolidate_outputs,
    default_consolidated,
    find_outputs,
)
from embedder.queue import connection as mongo
from embedder.queue.spec import QueueSpec
from embedder.storage.consolidate import (
    ConsolidateSettings,
    ConsolidationReport,
    Consolidator,
    consolidate_every,
)
from embedder.storage.output_lease import LeaseHeld

log = logging.getLogger("embedder")

LEASE_HELD_EXIT = 4  # another consolidator holds the output
BAD_SHARDS_EXIT = 3  # shards were left in place


def _size_option(name: str, field: str, envvar: str, help: str | None = None) -> Decorator:
    """A size option whose default is ``ConsolidateSettings``'s ``field``."""
    initial = size_text(default(ConsolidateSettings, field))
    return click.option(
        name, default=initial, show_default=True, type=BYTE_SIZE, envvar=envvar, help=help
    )


@click.command()
@queue_naming_options
@consolidation_dirs
@_size_option(
    "--target-file-size",
    "target_file_bytes",
    "EMBEDDER_TARGET_FILE_SIZE",
    "Size of each output file.",
)
@_size_option(
    "--memory-limit",
    "memory_limit_bytes",
    "EMBEDDER_MEMORY_LIMIT",
    "Peak memory for de-duplication and copying, whatever the input size.",
)
@click.option(
    "--retire",
    type=click.Choice(["delete", "move"]),
    default=default(ConsolidateSettings, "retire"),
    show_default=True,
    envvar="EMBEDDER_RETIRE",
    help="Merged shards: delete them, or move them to <shards-dir>/.retired.",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path, resolve_path=True),
    envvar="EMBEDDER_WORK_DIR",
    help="Local scratch space for spill files. [default: the system temp dir]",
)
@click.option(
    "--watch", is_flag=True, help="Keep consolidating new shards every --interval seconds."
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    envvar="EMBEDDER_CONSOLIDATE_INTERVAL",
)
@click.option(
    "--report-json",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the run report here.",
)
@click.option(
    "--lease-ttl",
    default=default(ConsolidateSettings, "lease_ttl_s"),
    show_default=True,
    envvar="EMBEDDER_CONSOLIDATE_LEASE_TTL",
    help="Seconds the output's lease outlives a silent holder (it renews every third).",
)
@click.option(
    "--mongo-uri",
    envvar="EMBEDDER_MONGO_URI",
    help="With --collection: record where this queue's output lives in its control document, "
    "so status and verify find it from anywhere. [default: not recorded]",
)
@click.option(
    "--output-dir",
    "files_outputs",
    multiple=True,
    help="Outputs of embed-files to merge instead of --shards-dir (repeatable): one run's, "
    "each --part's, or a directory holding them. [--consolidated-dir default: "
    "<output-dir>/consolidated for one]",
)
@click.option(
    "--sole-consolidator",
    is_flag=True,
    envvar="EMBEDDER_SOLE_CONSOLIDATOR",
    help="On a store without a conditional create (gs://, other pyarrow filesystems): "
    "promise that no other consolidator writes this output; refused otherwise.",
)
def consolidate(
    *,
    spec: QueueSpec | None,
    dirs: tuple[str, str],
    target_file_size: int,
    memory_limit: int,
    retire: str,
    work_dir: Path | None,
    watch: bool,
    interval: float,
    report_json: Path | None,
    lease_ttl: float,
    mongo_uri: str | None,
    files_outputs: tuple[str, ...],
    sole_consolidator: bool,
) -> None:
    """Merge shards into large, de-duplicated, verified Parquet files with a manifest.

    One consolidator commits to an output at a time: another one holding it makes this one
    exit 4 naming the holder, or wait for it with --watch.
    """
    if files_outputs:
        # Only a --consolidated-dir the user gave: else the target is <output>/consolidated.
        dirs = (dirs[0], given_dirs(dirs)[1] or "")
    try:
        settings = ConsolidateSettings(
            shards_uri=dirs[0],
            output_uri=dirs[1],
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

    if spec is not None and mongo_uri and not files_outputs:
        record_consolidation(mongo_uri, spec, dirs)

    def show(report: ConsolidationReport | PartsReport) -> None:
        write_json(report_json, report)
        if logs.json_lines_on():  # stderr stays JSON lines: the report as fields of one
            log.info(
                "consolidated: %s",
                "; ".join(report.lines()),
                extra=logs.fields(report=report.as_dict()),
            )
        else:
            click.echo("\n".join(report.lines()), err=True)

    try:
        if files_outputs:
            parts = _consolidate_files(files_outputs, settings)
            show(parts)
            sys.exit(BAD_SHARDS_EXIT if parts.bad_shards else 0)
        if watch:
            consolidate_every(settings, every_s=interval, stop=stop_flag(), on_report=show)
            return
        report = Consolidator(settings).run()
    except LeaseHeld as held:
        click.echo(f"consolidate: {held}", err=True)
        sys.exit(LEASE_HELD_EXIT)
    except EmbedderError as exc:
        raise click.ClickException(str(exc)) from None
    show(report)
    if report.bad_shards:
        sys.exit(BAD_SHARDS_EXIT)


def _consolidate_files(uris: tuple[str, ...], settings: ConsolidateSettings) -> PartsReport:
    """File-corpus outputs (one run's, or the parts of one) into one consolidated output."""
    outputs = find_outputs(uris)
    target = settings.output_uri or default_consolidated(uris)
    return consolidate_outputs(
        outputs, dataclasses.replace(settings, shards_uri=outputs[0].shards_uri, output_uri=target)
    )


@click.command()
@queue_options
@consolidation_dirs
@_size_option("--memory-limit", "memory_limit_bytes", "EMBEDDER_MEMORY_LIMIT")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--doc",
    "doc_ids",
    multiple=True,
    type=DOC_ID,
    help='Only say which model embedded this doc (an id: 42, abc, {"$oid": ...}) and check its '
    "row; repeatable. Exit 1 when a doc is not found or its row is missing, or from another "
    "model than its mark or another text than it holds now; 3 when MongoDB is unreachable.",
)
def verify(
    *,
    spec: QueueSpec,
    mongo_uri: str,
    dirs: tuple[str, str],
    memory_limit: int,
    as_json: bool,
    doc_ids: tuple[list[Any], ...],
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

    given = given_dirs(dirs)
    if doc_ids:
        _show_lineage(spec, mongo_uri, given, doc_ids, as_json=as_json)
        return

    async def check(client: AsyncMongoClient[dict[str, Any]]) -> VerifyReport:
        shards_dir, consolidated_dir = await output_dirs(client, spec, given)
        return await run_verify(
            client, spec, consolidated_dir, shards_uri=shards_dir, memory_limit=memory_limit
        )

    try:
        report = event_loop_runner()(with_mongo(mongo_uri, check))
    except EmbedderError as exc:
        # Whatever stopped the check is not a verdict on the data: its own exit code.
        report = VerifyReport.cannot(mongo.scrub(str(exc), mongo_uri))
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else "\n".join(report.lines()))
    sys.exit(report.verdict.value)


def _show_lineage(
    spec: QueueSpec,
    mongo_uri: str,
    given: tuple[str | None, str | None],
    doc_ids: tuple[list[Any], ...],
    *,
    as_json: bool,
) -> None:
    from embedder.ops.lineage import lineage
    from embedder.ops.verify import VerifyReport

    async def collect(client: AsyncMongoClient[dict[str, Any]]) -> list[Any]:
        shards_dir, consolidated_dir = await output_dirs(client, spec, given)
        return [
            await lineage(
                client, spec, ids, consolidated_uri=consolidated_dir, shards_uri=shards_dir
            )
            for ids in doc_ids
        ]

    try:
        found = event_loop_runner()(with_mongo(mongo_uri, collect))
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


COMMANDS = (consolidate, verify)

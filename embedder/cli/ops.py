"""Commands for operators: ``status``, ``requeue``, ``autotune``."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import click
from pymongo import AsyncMongoClient

from embedder.cli import failures
from embedder.cli.exit_codes import ExitCode
from embedder.cli.locating import given_dirs, output_dirs
from embedder.cli.options import (
    DATABASE,
    DEFAULT_MONGO_URI,
    consolidation_dirs,
    default,
    queue_options,
    tei_endpoints,
)
from embedder.cli.running import run, stop_flag, with_mongo
from embedder.cli.types import POSITIVE_INT_LIST, WRITABLE_FILE
from embedder.errors import ConfigurationError, EmbedderError
from embedder.ops.autotune import SweepSettings
from embedder.queue.spec import DEFAULT_DATABASE, DEFAULT_TEXT_FIELD, QueueSpec

log = logging.getLogger("embedder")


@click.command("status")
@click.option(
    "--output-dir",
    required=True,
    help="A file corpus's output (embed-files --output-dir).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option(
    "--watch", "watch_s", type=float, default=None, help="Refresh every N seconds until Ctrl-C."
)
def files_status(*, output_dir: str, as_json: bool, watch_s: float | None) -> None:
    """A file corpus's chunks done, leased (by whom, since when) and pending, rows, rate and
    ETA, read from its output alone: no MongoDB."""
    from embedder.files import status as corpus_status

    def read() -> corpus_status.FilesStatus:
        try:
            return corpus_status.collect(output_dir)
        except EmbedderError as exc:
            raise click.ClickException(str(exc)) from None

    _show_status(read, as_json=as_json, watch_s=watch_s)


class _Status(Protocol):
    def as_dict(self) -> dict[str, Any]: ...
    def lines(self) -> list[str]: ...


def _show_status[S: _Status](
    read: Callable[[], S], *, as_json: bool, watch_s: float | None
) -> None:
    """A status once, or every ``watch_s`` seconds until Ctrl-C; as text or JSON."""
    from embedder.ops import status as queue_status

    def show(current: S) -> None:
        if watch_s and not as_json:
            click.clear()
        click.echo(
            json.dumps(current.as_dict(), indent=2) if as_json else "\n".join(current.lines())
        )

    if watch_s:
        queue_status.watch(read, show, every_s=watch_s, stop=stop_flag())
    else:
        show(read())


class _QueueOrFilesStatus(click.Command):
    """``status`` of a queue, or with ``--output-dir`` of a file corpus (which has no queue
    options to require)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        if any(a == "--output-dir" or a.startswith("--output-dir=") for a in args):
            return files_status.make_context(info_name, args, parent, **extra)
        return super().make_context(info_name, args, parent, **extra)


@click.command(cls=_QueueOrFilesStatus)
@queue_options
@consolidation_dirs
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option(
    "--watch", "watch_s", type=float, default=None, help="Refresh every N seconds until Ctrl-C."
)
def status(
    *,
    spec: QueueSpec,
    mongo_uri: str,
    dirs: tuple[str, str],
    as_json: bool,
    watch_s: float | None,
) -> None:
    """Pending, done and failed docs, rate and ETA, workers and leases, consolidation.

    For a file corpus: `embedder status --output-dir DIR [--json] [--watch N]` (chunks done,
    leased and pending, rows, rate, ETA; no MongoDB).
    """
    from embedder.ops import status as queue_status
    from embedder.queue.diagnosis import why_nothing_pending

    nothing_queued: dict[str, str | None] = {}  # why, as of the last read

    given = given_dirs(dirs)

    async def collect(client: AsyncMongoClient[dict[str, Any]]) -> queue_status.QueueStatus:
        shards_dir, consolidated_dir = await output_dirs(client, spec, given)
        current = await queue_status.collect(
            client, spec, consolidated_uri=consolidated_dir, shards_uri=shards_dir
        )
        nothing_queued["why"] = await why_nothing_pending(client, spec)
        return current

    def read() -> queue_status.QueueStatus:
        return run(with_mongo(mongo_uri, collect, queue=spec), mongo_uri)

    def show(current: queue_status.QueueStatus) -> None:
        nothing = nothing_queued.get("why")
        if watch_s and not as_json:
            click.clear()
        if as_json:
            click.echo(json.dumps({**current.as_dict(), "nothing_queued": nothing}, indent=2))
        else:
            click.echo(
                "\n".join([*current.lines(), *([f"nothing queued: {nothing}"] if nothing else [])])
            )

    if watch_s:
        queue_status.watch(read, show, every_s=watch_s, stop=stop_flag())
    else:
        show(read())


@click.command()
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
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Docs per update.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def requeue(
    *,
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
    report = run(
        with_mongo(
            mongo_uri,
            lambda client: requeuing.requeue(
                client, spec, selection, dry_run=dry_run, batch_size=batch_size
            ),
            queue=spec,
        ),
        mongo_uri,
    )
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else "\n".join(report.lines()))


def _numbers_text(numbers: tuple[int, ...]) -> str:
    return ",".join(str(n) for n in numbers)


@click.command()
@tei_endpoints
@click.option("--collection", envvar="EMBEDDER_COLLECTION", help="Sample texts from it.")
@click.option(
    "--mongo-uri", default=DEFAULT_MONGO_URI, show_default=True, envvar="EMBEDDER_MONGO_URI"
)
@DATABASE
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
@click.option(
    "--batch-sizes",
    default=_numbers_text(default(SweepSettings, "batch_sizes")),
    show_default=True,
    type=POSITIVE_INT_LIST,
)
@click.option(
    "--concurrency-levels",
    default=_numbers_text(default(SweepSettings, "concurrencies")),
    show_default=True,
    type=POSITIVE_INT_LIST,
    help="Requests in flight per endpoint, as embed --concurrency means it.",
)
@click.option(
    "--warmup",
    default=default(SweepSettings, "warmup_s"),
    show_default=True,
    help="Seconds before each cell counts.",
)
@click.option(
    "--duration",
    default=default(SweepSettings, "duration_s"),
    show_default=True,
    help="Seconds measured per cell.",
)
@click.option(
    "--p95-slo", default=default(SweepSettings, "p95_slo_s"), show_default=True, help="Seconds."
)
@click.option(
    "--early-stop/--no-early-stop",
    default=default(SweepSettings, "early_stop"),
    show_default=True,
    help="End a row once throughput has plateaued and latency only grows.",
)
@click.option(
    "--report",
    default="autotune-report",
    show_default=True,
    type=WRITABLE_FILE,
    help="Writes REPORT.json and REPORT.md.",
)
def autotune(
    *,
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
        settings = SweepSettings(
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
        texts = run(
            with_mongo(
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

        result = run(tuning.sweep(urls, texts, settings, api_key=api_key, on_cell=shown), api_key)
    queue_args = ["--collection", collection] if collection else []
    if collection and database != DEFAULT_DATABASE:
        queue_args += ["--database", database]
    if collection and text_field != DEFAULT_TEXT_FIELD:
        queue_args += ["--text-field", text_field]
    result.embed_command = tuning.embed_command(result, queue_args)
    markdown = tuning.report_markdown(result)
    click.echo(markdown)
    if result.embed_command:
        click.echo(f"run it: {result.embed_command}")
    as_json = json.dumps(result.as_dict(), indent=2) + "\n"
    failures.write_after_result(report.with_suffix(".json"), as_json, "--report")
    failures.write_after_result(report.with_suffix(".md"), markdown, "--report")
    click.echo(
        f"wrote {report.with_suffix('.json').resolve()} and {report.with_suffix('.md').resolve()}"
    )
    if result.best is None:
        sys.exit(ExitCode.DISCREPANCY)


COMMANDS = (status, requeue, autotune)

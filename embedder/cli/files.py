"""``embed-files``: embed a corpus in files (NDJSON, Parquet, CSV/TSV, pickle) with no database,
through the same pipeline as ``embed``; workers share it by chunk leases beside the output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from embedder.cli.options import AT_LEAST_ONE, default
from embedder.cli.running import run, write_json
from embedder.cli.worker import (
    fleet_options,
    metrics_options,
    summary_json_option,
    worker_options,
)
from embedder.errors import EmbedderError
from embedder.files.plan import DEFAULT_CHUNK_ROWS, Selection
from embedder.files.readers import open_source
from embedder.files.records import FORMATS
from embedder.files.runner import DEFAULT_HOT_DIR, FilesJob, run_embed_files
from embedder.fleet.routing import FleetSettings
from embedder.worker.pipeline import WorkerSettings
from embedder.worker.runner import MetricsSettings


class Part(click.ParamType[tuple[int, int]]):
    """``I/N``: part I of N (1-based)."""

    name = "I/N"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        left, _, right = text.partition("/")
        if not (left.isdigit() and right.isdigit()) or not 1 <= int(left) <= int(right):
            self.fail(f"{value!r} is not a part such as 1/2 (I of N, 1 <= I <= N)", param, ctx)
        return int(left), int(right)


def default_output(input_uri: str, selection: Selection) -> str:
    """``embeddings/files/<corpus name>/<rows>[/part-I-of-N]``: a sample, a limit and each
    part land apart from a full run's output."""
    stem = input_uri.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0] or "corpus"
    path = f"embeddings/files/{stem}/{selection.rows_label}"
    if selection.parts > 1:
        path += f"/part-{selection.part}-of-{selection.parts}"
    return path


# The corpus options of every command that reads a file corpus (embed-files, load).
CORPUS_INPUT = click.option(
    "--input",
    "input_uri",
    required=True,
    envvar="EMBEDDER_INPUT",
    help="The corpus: a file, a Parquet dataset directory, or a pyarrow.fs URI (s3://...).",
)
CORPUS_FORMAT = click.option(
    "--format",
    "corpus_format",
    type=click.Choice(["auto", *FORMATS]),
    default="auto",
    show_default=True,
    help="auto: by the name (.jsonl/.ndjson[.gz|.zst], .parquet or a directory, .csv, .tsv, .pkl).",
)


@click.command("embed-files")
@CORPUS_INPUT
@CORPUS_FORMAT
@click.option("--text-field", default="text", show_default=True, help="Dotted path of the text.")
@click.option(
    "--id-field",
    help="Dotted path of each record's id (a string or an integer). [default: the record's "
    "position in the corpus, counted from 0]",
)
@click.option(
    "--output-dir",
    envvar="EMBEDDER_OUTPUT_DIR",
    help="Where shards and the chunks' bookkeeping go: a path or a pyarrow.fs URI. "
    "[default: embeddings/files/<corpus name>/<all|limit-N|sample-N-seed-S>[/part-I-of-N]]",
)
@click.option(
    "--part",
    type=Part(),
    default="1/1",
    show_default=True,
    help="Take part I of N of the chunks (clusters that share no storage; each part has "
    "its own output, and `embedder consolidate --output-dir` merges them).",
)
@click.option("--limit", type=AT_LEAST_ONE, help="Embed the first N rows only (to try settings).")
@click.option("--sample", type=AT_LEAST_ONE, help="Embed a random sample of N rows.")
@click.option("--seed", type=int, default=0, show_default=True, help="The --sample's seed.")
@click.option(
    "--chunk-rows",
    type=AT_LEAST_ONE,
    default=DEFAULT_CHUNK_ROWS,
    show_default=True,
    help="Rows per chunk (a Parquet corpus: whole row groups up to this many).",
)
@click.option(
    "--lease-ttl",
    type=click.FloatRange(min=3),
    default=default(FilesJob, "lease_ttl_s"),
    show_default=True,
    envvar="EMBEDDER_LEASE_TTL",
    help="Seconds before a silent worker's chunks may be taken over.",
)
@click.option(
    "--hot-dir",
    default=str(DEFAULT_HOT_DIR),
    show_default=True,
    envvar="EMBEDDER_HOT_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Local directory where shards are written before they are published.",
)
@fleet_options
@worker_options
@metrics_options
@summary_json_option
def embed_files(
    *,
    input_uri: str,
    corpus_format: str,
    text_field: str,
    id_field: str | None,
    output_dir: str | None,
    part: tuple[int, int],
    limit: int | None,
    sample: int | None,
    seed: int,
    chunk_rows: int,
    lease_ttl: float,
    hot_dir: Path,
    fleet: FleetSettings,
    worker: WorkerSettings,
    metrics: MetricsSettings | None,
    summary_json: Path | None,
) -> None:
    """Embed a corpus in files into Parquet shards, one per chunk; exits when every chunk of
    this part is done (--once is implied). Start as many workers as you like, on any hosts
    that see the output: they share the chunks."""
    try:
        selection = Selection(limit, sample, seed, part[0], part[1])
        source = open_source(input_uri, corpus_format, text_field=text_field, id_field=id_field)
        job = FilesJob(
            source,
            output_dir or default_output(input_uri, selection),
            fleet,
            selection=selection,
            chunk_rows=chunk_rows,
            hot_dir=hot_dir,
            lease_ttl_s=lease_ttl,
            worker=WorkerSettings(
                text_field=text_field,
                once=True,
                poll_interval_s=worker.poll_interval_s,
                drain_timeout_s=worker.drain_timeout_s,
            ),
            metrics=metrics,
        )
    except EmbedderError as exc:
        raise click.UsageError(str(exc)) from None
    summary = run(run_embed_files(job), fleet.api_key)
    write_json(summary_json, summary, "--summary-json")
    click.echo("\n".join(summary.lines()), err=True)
    click.echo(f"output: {job.output_uri}", err=True)


COMMANDS = (embed_files,)

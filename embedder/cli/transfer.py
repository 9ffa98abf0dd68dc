"""Commands that move data in and out: ``export`` the output as one matrix in corpus order,
``load`` a file corpus into MongoDB."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from embedder.cli.files import CORPUS_FORMAT, CORPUS_INPUT
from embedder.cli.options import DATABASE, MONGO_URI, TEXT_FIELD_HELP, default
from embedder.cli.running import run, with_mongo, write_json
from embedder.cli.types import BYTE_SIZE, WRITABLE_FILE, size_text
from embedder.errors import ConfigurationError, EmbedderError
from embedder.files.readers import open_source
from embedder.files.to_mongo import LoadSettings, load
from embedder.ops.export import ExportSettings, export
from embedder.ops.export_order import OrderBy
from embedder.ops.export_report import ExportReport

_FILE = click.Path(dir_okay=False, path_type=Path)


@click.command(name="export")
@click.option(
    "--consolidated-dir",
    required=True,
    envvar="EMBEDDER_CONSOLIDATED_DIR",
    help="The consolidated output (of a file corpus or a MongoDB queue): a path or a "
    "pyarrow.fs URI.",
)
@click.option("--npy", type=_FILE, help="Write the matrix here as a NumPy .npy.")
@click.option(
    "--pickle",
    "pickle_path",
    type=_FILE,
    help='Write {"ids": [...], "embeddings": float32 matrix} here as a pickle.',
)
@click.option(
    "--order-by",
    type=click.Choice([OrderBy.POSITION.value, OrderBy.ID.value]),
    help="position: the _id is the record's position in a file corpus (embed-files without "
    "--id-field); id: by _id as MongoDB sorts it. [default: a file corpus's order from its "
    "plan (see --corpus), else id]",
)
@click.option(
    "--corpus",
    "corpus_uri",
    help="The embed-files output (or the directory holding its parts) whose plan gives the "
    "corpus order and rows, ids read from the corpus where an id field gave them. "
    "[default: the consolidated directory's parent, when it is one]",
)
@click.option(
    "--ids",
    "ids_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='The order as a file of ids, one a line (42, abc, {"$oid": "..."}); a row for '
    "each line, every line's id required.",
)
@click.option(
    "--expect-rows",
    type=click.IntRange(min=0),
    envvar="EMBEDDER_EXPECT_ROWS",
    help="How many rows the corpus has; fewer (or more) fails the export.",
)
@click.option(
    "--norm-tolerance",
    type=click.FloatRange(min=0, min_open=True),
    default=default(ExportSettings, "norm_tolerance"),
    show_default=True,
    help="How far from 1.0 a normalized vector's norm may be.",
)
@click.option(
    "--memory-limit",
    type=BYTE_SIZE,
    default=size_text(default(ExportSettings, "memory_limit_bytes")),
    show_default=True,
    envvar="EMBEDDER_MEMORY_LIMIT",
    help="Memory for working out the order (it spills to --work-dir beyond).",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EMBEDDER_WORK_DIR",
    help="Local scratch space. [default: the system temp dir]",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--report-json", type=WRITABLE_FILE, help="Write the report here as JSON.")
def export_command(
    *,
    consolidated_dir: str,
    npy: Path | None,
    pickle_path: Path | None,
    order_by: str | None,
    corpus_uri: str | None,
    ids_file: Path | None,
    expect_rows: int | None,
    norm_tolerance: float,
    memory_limit: int,
    work_dir: Path | None,
    as_json: bool,
    report_json: Path | None,
) -> None:
    """Write the vectors in corpus order as an .npy and/or a pickle, and check them.

    Checks every row present (naming the missing), the shape, every norm within
    --norm-tolerance of 1.0 and the .npy's size, printing one line per failed check. A row
    the output lacks is NaN in the matrix and None in the ids.

    \b
    Exit codes:
      0  OK
      1  FAILED: a check failed (the files are written, for a look)
      2  usage error
      3  COULD NOT CHECK: no output, or files that cannot be read
    """
    try:
        settings = ExportSettings(
            consolidated_uri=consolidated_dir,
            npy=npy,
            pickle=pickle_path,
            order_by=OrderBy(order_by) if order_by else None,
            corpus_uri=corpus_uri,
            ids_file=ids_file,
            expect_rows=expect_rows,
            norm_tolerance=norm_tolerance,
            memory_limit_bytes=memory_limit,
            work_dir=work_dir,
        )
        report = export(settings)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    except EmbedderError as exc:
        report = ExportReport.cannot(consolidated_dir, str(exc))
    write_json(report_json, report, "--report-json")
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else "\n".join(report.lines()))
    sys.exit(report.verdict.value)


@click.command(name="load")
@CORPUS_INPUT
@click.option("--collection", required=True, envvar="EMBEDDER_COLLECTION", help="Load into it.")
@DATABASE
@MONGO_URI
@CORPUS_FORMAT
@click.option("--text-field", default="text", show_default=True, help=TEXT_FIELD_HELP)
@click.option(
    "--id-field",
    help="Field holding each record's id (a string or an integer), the doc's _id. "
    "[default: the record's 0-based position in the file]",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=default(LoadSettings, "batch_size"),
    show_default=True,
    help="Documents per bulk insert.",
)
@click.option(
    "--failures-file",
    type=_FILE,
    help="Write every bad record here, one JSON object a line (position, line_or_row, id, "
    "reason, cause).",
)
@click.option("--report-json", type=WRITABLE_FILE, help="Write the summary here as JSON.")
def load_command(
    *,
    input_uri: str,
    collection: str,
    database: str,
    mongo_uri: str,
    corpus_format: str,
    text_field: str,
    id_field: str | None,
    batch_size: int,
    failures_file: Path | None,
    report_json: Path | None,
) -> None:
    """Stream a file corpus (NDJSON, Parquet, CSV/TSV, pickle) into a MongoDB collection.

    Each record becomes {_id, <text field>: text}. Resumable: a rerun skips the records
    already there. Bad records are reported with their line or row and reason, and never
    stop the load. Exit 1 when a write failed for another reason than the record being there.
    """
    try:
        settings = LoadSettings(
            source=open_source(input_uri, corpus_format, text_field=text_field, id_field=id_field),
            database=database,
            collection=collection,
            batch_size=batch_size,
            failures_path=failures_file,
        )
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    report = run(with_mongo(mongo_uri, lambda client: load(client, settings)), mongo_uri)
    write_json(report_json, report, "--report-json")
    click.echo("\n".join(report.lines()), err=True)
    if not report.ok:
        sys.exit(1)


COMMANDS = (export_command, load_command)

"""Commands that move data in and out: ``export`` the output as one matrix in corpus order."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from embedder.cli.options import default
from embedder.cli.running import write_json
from embedder.cli.types import BYTE_SIZE, size_text
from embedder.errors import ConfigurationError, EmbedderError
from embedder.ops.export import ExportReport, ExportSettings, export
from embedder.ops.export_order import OrderBy

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
    help="Corpus order: by the rows' position in a file corpus, or by _id as MongoDB sorts "
    "it. [default: position when the rows carry one, else id]",
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
@click.option("--report-json", type=_FILE, help="Write the report here as JSON.")
def export_command(
    *,
    consolidated_dir: str,
    npy: Path | None,
    pickle_path: Path | None,
    order_by: str | None,
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
    write_json(report_json, report)
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else "\n".join(report.lines()))
    sys.exit(report.verdict.value)


COMMANDS = (export_command,)

"""The ``embedder`` command line: parses options, builds each stage's settings, delegates.

Every option has a default and an ``EMBEDDER_*`` environment variable; secrets (the Mongo
URI's password, the TEI API key) can come from the environment or a file, not only argv.
Commands by audience: ``worker`` (embed, indexes, pause, resume), ``output`` (consolidate,
verify), ``ops`` (status, requeue, autotune), ``dev`` (serve, dev-mongo).
"""

from __future__ import annotations

import click

from embedder import __version__
from embedder.cli import dev, failures, files, ops, output, transfer, worker
from embedder.cli.conventions import LOG_LEVELS, configure_logging, with_conventions


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="embedder")
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    envvar="EMBEDDER_LOG_LEVEL",
    type=LOG_LEVELS,
)
@click.option("--log-json", is_flag=True, envvar="EMBEDDER_LOG_JSON", help="Log JSON lines.")
def cli(log_level: str, log_json: bool) -> None:
    """Embed MongoDB text collections on a TEI fleet into Parquet, crash-safely."""
    configure_logging(log_level, log_json)


for command in (
    *worker.COMMANDS,
    *files.COMMANDS,
    *output.COMMANDS,
    *transfer.COMMANDS,
    *ops.COMMANDS,
    *dev.COMMANDS,
):
    cli.add_command(command)
with_conventions(cli)


def main(argv: list[str] | None = None) -> None:
    """Run a command; its failures are one ``Error:`` line and an exit code (``failures``)."""
    failures.run_command(lambda: cli.main(args=argv, prog_name="embedder", standalone_mode=False))


__all__ = ["cli", "main"]

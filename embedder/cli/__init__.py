"""The ``embedder`` command line: parses options, builds each stage's settings, delegates.

Every option has a default and an ``EMBEDDER_*`` environment variable, shown in its help;
secrets (the Mongo URI's password, the API key) can come from the environment or a file, not
only argv. Commands by audience: ``worker`` (embed, indexes, pause, resume), ``files``
(embed-files), ``output`` (consolidate, verify), ``transfer`` (export, load), ``ops`` (status,
requeue, autotune), ``dev`` (serve, dev-mongo, dev-samples).
"""

from __future__ import annotations

import atexit
import functools
import gc
import importlib
import sys

import click

from embedder import __version__
from embedder.cli import failures
from embedder.cli.conventions import LOG_LEVELS, configure_logging, with_conventions

# The modules of commands, the worker's first: `embed` imports no other.
_COMMAND_MODULES = ("worker", "files", "output", "transfer", "ops", "dev")


@functools.cache
def _commands(module: str) -> dict[str, click.Command]:
    loaded = importlib.import_module(f"embedder.cli.{module}")
    return {command.name or "": with_conventions(command) for command in loaded.COMMANDS}


class _CommandsOnDemand(click.Group):
    """Imports a module of commands only when one of them runs (or help lists them): a worker
    does not pay at every start for DuckDB, pandas and the server that other commands use."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for module in _COMMAND_MODULES:
            if cmd_name in _commands(module):
                return _commands(module)[cmd_name]
        return None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for module in _COMMAND_MODULES for name in _commands(module))


@click.group(
    cls=_CommandsOnDemand,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
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
    """Embed text collections (MongoDB or files) on a fleet of embedding servers into Parquet,
    crash-safely."""
    configure_logging(log_level, log_json)


with_conventions(cli)  # the group's own options; each command's as its module loads


def _skip_last_collections() -> None:
    # DuckDB's bindings (nanobind) print "leaked instances" warnings for objects a last
    # collection did not free: commands that used it (consolidate, verify, export) are long
    # anyway, and keep the collections.
    if "duckdb" not in sys.modules:
        gc.freeze()


def main(argv: list[str] | None = None) -> None:
    """Run a command; its failures are one ``Error:`` line and an exit code (``failures``)."""
    # At exit Python's last garbage collections walk every object the imports made (up to a
    # second of a short job's run); whatever is still alive then is freed with the process.
    # Everything that must reach disk or MongoDB was closed explicitly before.
    atexit.unregister(_skip_last_collections)
    atexit.register(_skip_last_collections)
    failures.run_command(lambda: cli.main(args=argv, prog_name="embedder", standalone_mode=False))


__all__ = ["cli", "main"]

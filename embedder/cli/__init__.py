"""The ``embedder`` command line: parses options, builds each stage's settings, delegates.

Every option has a default and an ``EMBEDDER_*`` environment variable; secrets (the Mongo
URI's password, the TEI API key) can come from the environment or a file, not only argv.
Commands by audience: ``worker`` (embed, indexes, pause, resume), ``output`` (consolidate,
verify), ``ops`` (status, requeue, autotune), ``dev`` (serve, dev-mongo).
"""

from __future__ import annotations

import atexit
import functools
import gc
import importlib

import click

from embedder import __version__, logs

# The modules of commands, the worker's first: `embed` imports no other.
_COMMAND_MODULES = ("worker", "output", "ops", "dev")


@functools.cache
def _commands(module: str) -> dict[str, click.Command]:
    loaded = importlib.import_module(f"embedder.cli.{module}")
    return {command.name or "": command for command in loaded.COMMANDS}


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
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option("--log-json", is_flag=True, envvar="EMBEDDER_LOG_JSON", help="Log JSON lines.")
def cli(log_level: str, log_json: bool) -> None:
    """Embed MongoDB text collections on a TEI fleet into Parquet, crash-safely."""
    logs.configure(log_level, json_lines=log_json)


def main(argv: list[str] | None = None) -> None:
    # At exit Python's last garbage collections walk every object the imports made (up to a
    # second of a short job's run); whatever is still alive then is freed with the process.
    # Everything that must reach disk or MongoDB was closed explicitly before.
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    cli.main(args=argv, prog_name="embedder")


__all__ = ["cli", "main"]

"""What every command shares: ``--log-level`` and ``--log-json`` wherever they are written
(``embedder --log-json embed`` and ``embedder embed --log-json`` alike, so the seed's
``python embed_tweets.py --log-json`` works), and an ``EMBEDDER_*`` environment variable for
every option, shown in ``--help``: the shared options' own (EMBEDDER_MONGO_URI), and
EMBEDDER_<COMMAND>_<OPTION> for an option of one command (EMBEDDER_STATUS_WATCH), as click's
``auto_envvar_prefix`` names them."""

from __future__ import annotations

from typing import Any

import click

from embedder import logs

ENV_PREFIX = "EMBEDDER_"
LOG_LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)
# Options that print and exit before anything else: an environment variable means nothing there.
_NO_ENVVAR = frozenset({"help", "version"})
# Where the logging settings read so far are kept: ``ctx.meta`` is shared by a command and
# the group above it, so a command's own option overrides only what it sets.
_SETTINGS = "embedder.logging"


def envvar_name(command: str, option: click.Option) -> str:
    """``EMBEDDER_``, the command's name and the option's longest name:
    ``status --watch`` -> EMBEDDER_STATUS_WATCH."""
    longest = max(option.opts, key=len).lstrip("-")
    return ENV_PREFIX + f"{command}_{longest}".replace("-", "_").upper()


def with_conventions(command: click.Command) -> click.Command:
    """``command`` (a group: each of its commands too) with the logging options and an
    environment variable, shown in the help, for every option."""
    if isinstance(command, click.Group):
        _show_envvars(command)
        for sub in command.commands.values():
            with_conventions(sub)
        return command
    if "log_level" not in {p.name for p in command.params}:
        command.params.extend(_log_options())
    _show_envvars(command)
    return command


def _show_envvars(command: click.Command) -> None:
    for param in command.params:
        if isinstance(param, click.Option) and param.name not in _NO_ENVVAR:
            if param.envvar is None:
                param.envvar = envvar_name(str(command.name), param)
            param.show_envvar = True


def configure_logging(level: str | None, json_lines: bool) -> None:
    """Record what the group's options say and set logging up from it."""
    click.get_current_context().meta[_SETTINGS] = {"level": level or "INFO", "json": json_lines}
    logs.configure(level or "INFO", json_lines=json_lines)


def _log_options() -> list[click.Option]:
    return [
        click.Option(
            ["--log-level"],
            type=LOG_LEVELS,
            envvar="EMBEDDER_LOG_LEVEL",
            expose_value=False,
            callback=_given("level"),
            help="DEBUG, INFO, WARNING or ERROR. [default: INFO]",
        ),
        click.Option(
            ["--log-json"],
            is_flag=True,
            envvar="EMBEDDER_LOG_JSON",
            expose_value=False,
            callback=_given("json"),
            help="Log JSON lines (the run summary as JSON fields).",
        ),
    ]


def _given(setting: str) -> Any:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is None or value is False:  # not given here: the group's setting stands
            return
        settings = ctx.meta.setdefault(_SETTINGS, {"level": "INFO", "json": False})
        settings[setting] = value
        logs.configure(settings["level"], json_lines=settings["json"])

    return callback

"""Every command's options have an EMBEDDER_* variable shown in --help, and the logging
options work after the command's name as well as before it."""

from __future__ import annotations

import json
import logging
import re

import click
import pytest
from click.testing import CliRunner

from embedder.cli import cli
from embedder.logs import JsonFormatter, fields


def commands() -> list[tuple[list[str], click.Command]]:
    found: list[tuple[list[str], click.Command]] = [([], cli)]
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None
        found.append(([name], command))
    return found


@pytest.mark.parametrize(
    ("path", "command"), commands(), ids=[" ".join(path) or "cli" for path, _ in commands()]
)
def test_every_option_shows_its_environment_variable(
    path: list[str], command: click.Command
) -> None:
    shown = CliRunner().invoke(cli, [*path, "--help"], terminal_width=100)
    assert shown.exit_code == 0, shown.output
    help_text = re.sub(r"\s+", " ", shown.output)
    options = [p for p in command.params if isinstance(p, click.Option)]
    names = {p.name for p in options}
    assert path == [] or {"log_level", "log_json"} <= names
    for option in options:
        if option.name == "version":
            continue
        assert option.show_envvar, option.opts
        envvars = [option.envvar] if isinstance(option.envvar, str) else option.envvar
        assert envvars and all(v.startswith("EMBEDDER_") for v in envvars), option.opts
        if not option.hidden:
            assert f"env var: {envvars[0]}" in help_text, (option.opts, help_text)


def test_an_option_of_one_command_is_read_from_its_environment_variable() -> None:
    refused = CliRunner().invoke(
        cli,
        ["status", "--collection", "tweets"],
        env={"EMBEDDER_STATUS_WATCH": "often"},
    )
    assert refused.exit_code == 2
    assert "Invalid value for '--watch'" in refused.output
    assert "'often' is not a valid float" in refused.output


def test_logging_options_after_the_command_configure_logging() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        # The queue's --collection is missing, so the command stops after parsing.
        CliRunner().invoke(cli, ["status", "--log-json", "--log-level", "warning"])
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        assert root.level == logging.WARNING
        CliRunner().invoke(cli, ["--log-level", "error", "status"])
        assert not isinstance(root.handlers[0].formatter, JsonFormatter)
        assert root.level == logging.ERROR
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_json_lines_carry_structured_fields_as_json() -> None:
    record = logging.LogRecord(
        "embedder", logging.INFO, __file__, 1, "run finished: %s", ("x",), None
    )
    for name, value in fields(summary={"embedded": 3, "url": "http://u:secret@host"}).items():
        setattr(record, name, value)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "run finished: x"
    assert entry["summary"] == {"embedded": 3, "url": "http://u:***@host"}

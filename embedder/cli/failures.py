"""Every command's failures as one line: ``Error: <what is wrong>; <what to do>``, and its
exit code (``exit_codes``). Never a traceback for a mistake a person can fix.

Commands raise :class:`CannotRun` (or click's own errors) for what they recognise; ``main``
runs the command group under :func:`run_command`, which also turns Ctrl-C into exit 130
whatever library was running when it came, and an unexpected exception into one line naming
it (the traceback only at ``--log-level DEBUG``): a bug is still reported, but as a line a
person can paste, not as 134 lines of someone else's stack.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

from embedder import logs
from embedder.cli.exit_codes import ExitCode
from embedder.errors import EmbedderError, EndpointError
from embedder.queue import connection as mongo

log = logging.getLogger("embedder")


class CannotRun(click.ClickException):
    """The command could not run, or not to the end; the message says why and what to do."""

    exit_code = ExitCode.COULD_NOT_RUN


def scrubbed(message: str, *secrets: str | None) -> str:
    """``message`` safe to print: URIs' credentials and each given secret hidden."""
    return logs.redact(mongo.scrub(message, *secrets))


def cannot_run(exc: EmbedderError, *secrets: str | None) -> CannotRun:
    message = scrubbed(str(exc), *secrets)
    if isinstance(exc, EndpointError):  # a server's answer that ended the command
        message += (
            "; check --tei-urls and that an embedding server (TEI, vLLM, Infinity) runs there"
        )
    return CannotRun(message)


def address_refused(option: str, host: str, port: int, exc: OSError) -> CannotRun | None:
    """A listening socket refused (``exc``) as one line naming ``option``; None for another
    kind of OSError."""
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        why = f"{where} is already in use"
    elif exc.errno == errno.EACCES:
        why = f"listening on {where} is not permitted (ports under 1024 need privileges)"
    elif exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        why = f"{host} is not an address of this machine"
    else:
        return None
    return CannotRun(f"{option} {port}: {why}; stop what listens there or choose another {option}")


def writable_dir(path: Path, option: str) -> Path:
    """``path`` created if need be and proved writable (a file made and removed in it), before
    any work; else one line naming ``option``. Root ignores permission bits, so only a real
    write says whether a directory takes files."""
    absolute = path.expanduser().absolute()
    try:
        absolute.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=absolute, prefix=".embedder-probe-"):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise CannotRun(
            f"{option} {absolute}: cannot write there ({why}); choose a directory you can "
            "write, or fix its permissions"
        ) from None
    return absolute


def write_after_result(path: Path, text: str, option: str) -> None:
    """Write a report once its result is shown: a failure here loses the file, not the
    result, and is one line naming ``option``."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CannotRun(
            f"{option} {path.absolute()}: could not write the report ({exc.strerror or exc}); "
            "the result is shown above"
        ) from None


def run_command(invoke: Callable[[], Any]) -> NoReturn:
    """Run ``invoke`` (click's ``main`` in non-standalone mode) and exit with its code."""
    interrupted = threading.Event()

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    # Commands with their own way to stop (embed's drain, --watch loops) replace this handler;
    # everywhere else Ctrl-C is exit 130 even where a library turns it into its own error
    # (DuckDB: "Query interrupted").
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        code = invoke()
    except click.exceptions.Abort:
        _interrupted()
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()  # the help, as click shows it for a bare `embedder`
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        # The one line alone: click would put the usage before a usage error's.
        click.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except Exception as exc:
        if interrupted.is_set():
            _interrupted()
        _unexpected(exc)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    sys.exit(code if isinstance(code, int) else ExitCode.OK)


def _interrupted() -> NoReturn:
    click.echo("Error: interrupted (Ctrl-C); run the command again to carry on", err=True)
    sys.exit(ExitCode.INTERRUPTED)


def _unexpected(exc: Exception) -> NoReturn:
    name = type(exc).__name__
    first_line = scrubbed(str(exc)).strip().splitlines()[:1]
    what = f"{name}: {first_line[0]}" if first_line else name
    if log.isEnabledFor(logging.DEBUG):
        log.debug("the traceback of the unexpected error", exc_info=exc)
        hint = "this is a bug: please report it with the traceback above"
    else:
        hint = "this is a bug: rerun with --log-level DEBUG for its traceback and report it"
    click.echo(f"Error: unexpected {what}; {hint}", err=True)
    sys.exit(ExitCode.INTERNAL)

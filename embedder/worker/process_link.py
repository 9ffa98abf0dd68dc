"""The link between a worker process and its supervisor (``embed --processes N``,
:mod:`embedder.worker.processes`): the records that cross it, and the worker's end of it.

Up, the worker sends: its progress display's calls (replayed on the supervisor's one display),
its periodic progress record, its log records (written out by the supervisor, so one stream
holds every process's lines) and its result. Down come stop requests, and the end of the down
pipe is how a worker learns that its supervisor died: it then drains as on a first signal,
logging to its own stderr from then on. No send blocks the worker's event loop: records go to
an outbox that one thread writes to the pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol, cast

from embedder import logs
from embedder.queue.heartbeat import WorkerProgress
from embedder.telemetry import Summary
from embedder.worker.progress import Progress

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_FLUSH_S = 5.0  # what a worker waits, at its end, for its last records to leave


# --- up: worker -> supervisor ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    """Connected and about to claim; ``pending`` sizes the supervisor's display."""

    pending: int


@dataclass(frozen=True, slots=True)
class DisplayCall:
    """One call of the worker's progress display (``embedder.worker.progress.Progress``),
    made again on the supervisor's. Its arguments are increments, so that display adds up the
    workers whatever the calls carry."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Report:
    """The worker's progress record, every log interval (the one its heartbeat carries)."""

    progress: WorkerProgress


@dataclass(frozen=True, slots=True)
class LogLine:
    record: logging.LogRecord  # message formatted, traceback as text: nothing left to pickle


@dataclass(frozen=True, slots=True)
class Finished:
    summary: Summary | None  # None when the run failed
    error: str  # one line, "" on success
    exit_code: int
    cpu_s: float  # the process's CPU time, all threads
    ended: float  # time.monotonic(): one clock for every process of the host


type UpRecord = Started | DisplayCall | Report | LogLine | Finished


# --- down: supervisor -> worker ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stop:
    """A stop the supervisor passes on: drain (its first signal) or exit at once (its second).
    Never counted as a signal by the worker: a worker that got the same signal directly (a
    terminal's Ctrl-C reaches the whole process group, ``scancel`` every process) drains once."""

    now: bool
    signal: int


class WorkerExit(Exception):
    """A worker process's task ends with this exit code and one line saying why."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class WorkerTask(Protocol):
    """What one worker process runs; sent to it, so picklable."""

    def __call__(self, link: WorkerLink) -> Summary: ...


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str
    json_lines: bool


class WorkerLink:
    """The worker's end: what ``run_embed`` reports through (``runner.Supervised``)."""

    def __init__(
        self, index: int, up: Connection, down: Connection, log_settings: LogSettings
    ) -> None:
        self.index = index
        self._up = up
        self._down = down
        self._logging = log_settings
        self._supervisor = os.getppid()
        self._outbox: queue.SimpleQueue[UpRecord | None] = queue.SimpleQueue()
        # Re-entrant: the pre-start signal handlers run on the main thread, perhaps inside it.
        self._lock = threading.RLock()
        self._stop: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_asked = False
        self._orphaned = threading.Event()
        self._sender = threading.Thread(target=self._send_all, name="to-supervisor", daemon=True)
        self._listener = threading.Thread(target=self._listen, name="from-supervisor", daemon=True)

    def start(self) -> None:
        root = logging.getLogger()
        logs.configure(self._logging.level, json_lines=self._logging.json_lines)
        root.handlers[:] = [_ToSupervisor(self)]
        self._sender.start()
        self._listener.start()

    # --- what the worker reports --------------------------------------------------------------

    def display(self, pending: int) -> Progress:
        self.send(Started(pending))
        # The display's calls are whatever embedder.worker.progress.Progress declares.
        return cast(Progress, _ForwardedDisplay(self.send))

    def report(self, progress: WorkerProgress) -> None:
        self.send(Report(progress))

    def attach(self, stop: Callable[[], None]) -> None:
        """Called in the worker's event loop once it runs: ``stop`` asks it to drain."""
        with self._lock:
            self._stop, self._loop = stop, asyncio.get_running_loop()
            asked = self._stop_asked
        if asked:
            stop()

    def send(self, record: UpRecord) -> None:
        self._outbox.put(record)

    def close(self) -> None:
        """Send what is left (for a few seconds at most: the supervisor may be stuck)."""
        self._outbox.put(None)
        self._sender.join(_FLUSH_S)

    # --- stopping -----------------------------------------------------------------------------

    def request_stop(self, why: str) -> None:
        """Drain, as on a first signal; from any thread, any number of times."""
        with self._lock:
            if self._stop_asked:
                return
            self._stop_asked = True
            stop, loop = self._stop, self._loop
        log.warning("%s: finishing in-flight work, then exiting", why)
        if stop is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the run already ended, its loop closed
                loop.call_soon_threadsafe(stop)

    def _exit_now(self, sig: int) -> None:
        log.error(
            "the supervisor got %s again: exiting now; in-flight docs will be redone by the "
            "next run",
            signal.Signals(sig).name,
        )
        self.close()
        os._exit(128 + sig)

    def _listen(self) -> None:
        while True:
            try:
                stop: Stop = self._down.recv()
            except (EOFError, OSError):
                self._supervisor_gone()
                return
            if stop.now:
                self._exit_now(stop.signal)
            self.request_stop(f"the supervisor got {signal.Signals(stop.signal).name}")

    def _supervisor_gone(self) -> None:
        """No one reads the records any more: log to stderr, and drain."""
        if self._orphaned.is_set():
            return
        self._orphaned.set()
        logs.configure(self._logging.level, json_lines=self._logging.json_lines)
        self.request_stop(f"worker {self.index}: its supervisor (pid {self._supervisor}) is gone")

    def _send_all(self) -> None:
        while (record := self._outbox.get()) is not None:
            if not self._orphaned.is_set():
                try:
                    self._up.send(record)
                    continue
                except (OSError, ValueError):
                    self._supervisor_gone()
            if isinstance(record, LogLine):  # written here instead, after the others
                logging.getLogger().handle(record.record)


class _ToSupervisor(logging.handlers.QueueHandler):
    """Log records go up the link, formatted (a record's arguments may not pickle)."""

    def __init__(self, link: WorkerLink) -> None:
        super().__init__(queue.SimpleQueue())
        self._link = link

    def enqueue(self, record: logging.LogRecord) -> None:
        self._link.send(LogLine(record))


class _ForwardedDisplay:
    """The progress display of a worker under a supervisor: each call goes up as a record;
    ``close`` is the supervisor's, once every worker is done."""

    def __init__(self, send: Callable[[UpRecord], None]) -> None:
        self._send = send

    def __getattr__(self, method: str) -> Callable[..., None]:
        if method.startswith("_"):
            raise AttributeError(method)

        def forward(*args: Any, **kwargs: Any) -> None:
            if method != "close":
                self._send(DisplayCall(method, args, kwargs))

        return forward


def worker_process_main(
    index: int, task: WorkerTask, up: Connection, down: Connection, log_settings: LogSettings
) -> None:
    """A worker process's body (the target of its ``multiprocessing`` process)."""
    link = WorkerLink(index, up, down, log_settings)
    # The supervisor started this process with SIGINT ignored and both signals blocked, so
    # none was fatal or lost before this line.
    _drain_on_signals(link)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    link.start()
    summary, error, code = None, "", 0
    try:
        summary = task(link)
    except WorkerExit as exc:
        error, code = exc.message, exc.exit_code
    except Exception as exc:
        log.exception("worker %d failed", index)
        error, code = f"{type(exc).__name__}: {exc}", 1
    _drain_on_signals(link)  # the run's own handlers are gone with its event loop
    link.send(Finished(summary, error, code, time.process_time(), time.monotonic()))
    link.close()
    sys.exit(code)


def _drain_on_signals(link: WorkerLink) -> None:
    """Outside the run (which has handlers of its own): a signal asks for a drain, which the run
    honours as soon as it starts, or which is moot once it has ended."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda number, _: link.request_stop(signal.Signals(number).name))

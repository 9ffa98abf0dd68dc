"""Several worker processes on one queue, run as one command (``embed --processes N``).

A worker is bound by one core (its event loop); a host with several fast GPUs needs several.
The supervisor starts N worker processes, each a normal worker with its own owner id, event
loop and leases on the same queue, and gives the operator one of everything: one metrics
endpoint (prometheus_client's multiprocess mode), one progress display, one periodic log line,
one summary (the sum of the workers') and one exit code (the highest of the workers').

Processes come from ``multiprocessing``'s spawn context: each is a fresh interpreter (no fork
of a process that holds threads, an event loop or MongoDB connections), handed the job already
parsed and checked, and linked to the supervisor by two pipes (``process_link``).

Signals. The first SIGINT/SIGTERM makes every worker drain, as one worker does on its own; a
second makes them exit at once; a third kills them. These reach the workers as messages, not
signals, so a worker that also gets the signal directly (a terminal's Ctrl-C reaches the whole
process group; ``scancel`` and systemd's default ``KillMode`` signal every process) still
drains once. A supervisor that is killed outright leaves no orphans: its workers see their
pipe close, drain and exit, and their leases are released as on any drain.

A worker that fails or dies is reported (which one, its pid, its exit code and why) and the
others are asked to drain: the supervisor does not restart processes, for what makes one fail
(MongoDB or the fleet gone past their outage bounds, a configuration mistake) would make its
replacement fail too, and restarting is the job of whatever runs the command (systemd,
Kubernetes, SLURM). Exactly-once holds either way: a killed worker's docs are unmarked, its
leases expire and the next run (or a sibling still claiming) takes them over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from embedder import logs
from embedder.errors import ConfigurationError
from embedder.queue.heartbeat import WorkerProgress
from embedder.telemetry import Summary
from embedder.worker.process_link import (
    STOP_SIGNALS,
    DisplayCall,
    Finished,
    LogLine,
    LogSettings,
    Report,
    Started,
    Stop,
    UpRecord,
    WorkerTask,
    worker_process_main,
)
from embedder.worker.progress import Progress, for_stream
from embedder.worker.runner import MetricsSettings

log = logging.getLogger(__name__)

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when it is imported


def usable_cores() -> int:
    """The cores this process may run on (its affinity, where the OS says)."""
    count = getattr(os, "process_cpu_count", None)  # Python 3.13+
    if count is not None:
        return int(count() or 1)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class ProcessesSettings:
    metrics: MetricsSettings | None = None  # served by the supervisor, for every worker
    progress_bar: bool | None = None  # None: a bar when stderr is a terminal
    log_interval_s: float = 10.0


@dataclass(frozen=True, slots=True)
class WorkerOutcome:
    index: int  # 1..N, as the logs name the workers
    pid: int
    exit_code: int  # 128 + n for a process killed by signal n
    summary: Summary | None  # None when it failed or died
    cpu_s: float | None  # None when it died before saying
    ended: float | None  # time.monotonic() at its end


@dataclass(frozen=True, slots=True)
class ProcessesResult:
    summary: Summary  # the sum of the workers'
    exit_code: int  # the highest of the workers'
    workers: tuple[WorkerOutcome, ...]


def run_processes(tasks: Sequence[WorkerTask], settings: ProcessesSettings) -> ProcessesResult:
    """Run each task in a worker process of its own until all have ended. Blocking; call from
    the main thread (it handles SIGINT and SIGTERM while it runs)."""
    with _shared_metrics(settings.metrics) as metrics_dir:
        return _Supervisor(settings, metrics_dir).run(tasks)


@dataclass(eq=False)
class _Worker:
    index: int
    process: BaseProcess
    up: Connection  # records from the worker
    down: Connection  # stop requests to it
    up_open: bool = True
    progress: WorkerProgress | None = None
    reported_at: float = 0.0
    finished: Finished | None = None
    outcome: WorkerOutcome | None = None

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    @property
    def name(self) -> str:
        return f"worker {self.index} (pid {self.pid})"


class _Supervisor:
    def __init__(self, settings: ProcessesSettings, metrics_dir: str | None) -> None:
        self._settings = settings
        self._metrics_dir = metrics_dir
        self._workers: list[_Worker] = []
        self._display: Progress | None = None
        self._signals = 0
        self._stopping = False
        self._errors_seen: set[str] = set()

    def run(self, tasks: Sequence[WorkerTask]) -> ProcessesResult:
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        # Blocked while the workers start, so that they start with both blocked (and SIGINT
        # ignored) and unblock them once they can handle them; none is lost here meanwhile.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        previous_wakeup = signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                self._start(tasks)
            finally:
                for sig in STOP_SIGNALS:  # the numbers arrive on wake_read
                    signal.signal(sig, _noted)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            self._supervise(wake_read)
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake_read.close()
            wake_write.close()
            for worker in self._workers:  # only after a failure of the supervisor itself
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join()
            if self._display is not None:
                self._display.close()
        return self._result()

    def _start(self, tasks: Sequence[WorkerTask]) -> None:
        context = multiprocessing.get_context("spawn")
        settings = _log_settings()
        for index, task in enumerate(tasks, start=1):
            up_read, up_write = context.Pipe(duplex=False)
            down_read, down_write = context.Pipe(duplex=False)
            process = context.Process(
                target=worker_process_main,
                args=(index, task, up_write, down_read, settings),
                name=f"embedder-worker-{index}",
            )
            process.start()
            # The worker holds these ends now: the supervisor's copies would keep the pipes
            # open after the worker's end (and hide it from the worker, the other way round).
            up_write.close()
            down_read.close()
            worker = _Worker(index, process, up_read, down_write)
            self._workers.append(worker)
            log.info("%s started", worker.name)

    def _supervise(self, wake: socket.socket) -> None:
        next_line = time.monotonic() + self._settings.log_interval_s
        while live := [w for w in self._workers if w.outcome is None]:
            handles: list[Any] = [wake]
            handles += [w.up for w in live if w.up_open]
            handles += [w.process.sentinel for w in live]
            for ready in wait(handles, timeout=max(0.0, next_line - time.monotonic())):
                if ready is wake:
                    for number in wake.recv(64):
                        self._on_signal(signal.Signals(number))
                    continue
                for worker in live:
                    if ready is worker.up:
                        self._receive(worker)
                    elif ready == worker.process.sentinel:
                        self._reap(worker)
            if time.monotonic() >= next_line:
                self._log_progress()
                next_line = time.monotonic() + self._settings.log_interval_s

    # --- what the workers send --------------------------------------------------------------

    def _receive(self, worker: _Worker) -> None:
        try:
            record: UpRecord = worker.up.recv()
        except (EOFError, OSError):
            worker.up_open = False
            return
        match record:
            case Started(pending):
                if self._display is None:
                    self._display = for_stream(pending, enabled=self._settings.progress_bar)
            case DisplayCall():
                self._show(record)
            case Report(progress):
                worker.progress, worker.reported_at = progress, time.monotonic()
            case LogLine(line):
                line.name = f"{line.name} (worker {worker.index})"
                logging.getLogger().handle(line)
            case Finished():
                worker.finished = record

    def _show(self, call: DisplayCall) -> None:
        """Make a worker's display call on the supervisor's display: increments add up."""
        if self._display is None or call.method.startswith("_") or call.method == "close":
            return
        method = getattr(self._display, call.method, None)
        if callable(method):
            method(*call.args, **call.kwargs)

    def _log_progress(self) -> None:
        reported = sorted((w for w in self._workers if w.progress), key=lambda w: w.reported_at)
        if reported:
            total = sum_progress([w.progress for w in reported if w.progress is not None])
            live = sum(w.outcome is None for w in self._workers)
            log.info("%d of %d workers running: %s", live, len(self._workers), describe(total))

    # --- ends ---------------------------------------------------------------------------------

    def _reap(self, worker: _Worker) -> None:
        while worker.up_open and worker.up.poll():  # what it sent before exiting
            self._receive(worker)
        worker.process.join()
        code = worker.process.exitcode or 0
        exit_code = 128 - code if code < 0 else code
        finished = worker.finished
        worker.outcome = WorkerOutcome(
            worker.index,
            worker.pid,
            exit_code,
            finished.summary if finished else None,
            finished.cpu_s if finished else None,
            finished.ended if finished else None,
        )
        worker.down.close()
        worker.up.close()
        if self._metrics_dir is not None:
            mark_process_dead(worker.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
        if exit_code == 0:
            embedded = finished.summary.embedded if finished and finished.summary else 0
            log.info("%s finished: %d docs embedded", worker.name, embedded)
            return
        self._report_failure(worker, exit_code, code, finished)

    def _report_failure(
        self, worker: _Worker, exit_code: int, raw: int, finished: Finished | None
    ) -> None:
        if self._signals >= 2 and exit_code in (128 + s for s in STOP_SIGNALS):
            log.info("%s exited at once (exit code %d), as asked", worker.name, exit_code)
            return
        if raw < 0:
            why = f"was killed by {signal.Signals(-raw).name} (exit code {exit_code})"
        elif finished is None:
            why = f"exited with code {exit_code} before reporting (its log above says why)"
        elif finished.error in self._errors_seen:
            why = f"failed (exit code {exit_code}) the same way"
        else:
            why = f"failed (exit code {exit_code}): {finished.error}"
            self._errors_seen.add(finished.error)
        log.error("%s %s", worker.name, why)
        if not self._stopping:
            log.error(
                "stopping the other workers: they finish and mark what they hold; the docs of "
                "%s are pending again once its leases expire (--lease-ttl)",
                worker.name,
            )
            self._stop_all(Stop(now=False, signal=signal.SIGTERM))

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        live = [w for w in self._workers if w.outcome is None]
        if self._signals == 1:
            log.warning(
                "%s received: the %d workers finish their in-flight work, mark it and exit "
                "(signal again to make them exit at once)",
                sig.name,
                len(live),
            )
            self._stop_all(Stop(now=False, signal=sig))
        elif self._signals == 2:
            log.error(
                "%s received again: the workers exit now; their in-flight docs will be redone "
                "by the next run (a third signal kills them)",
                sig.name,
            )
            self._stop_all(Stop(now=True, signal=sig))
        else:
            log.error("%s received a third time: killing the workers", sig.name)
            for worker in live:
                worker.process.kill()

    def _stop_all(self, stop: Stop) -> None:
        self._stopping = True
        for worker in self._workers:
            if worker.outcome is None:
                with contextlib.suppress(OSError):  # it is exiting: its sentinel will say
                    worker.down.send(stop)

    def _result(self) -> ProcessesResult:
        outcomes = tuple(w.outcome for w in self._workers if w.outcome is not None)
        summaries = [o.summary for o in outcomes if o.summary is not None]
        return ProcessesResult(
            summary=sum_summaries(summaries),
            exit_code=max((o.exit_code for o in outcomes), default=0),
            workers=outcomes,
        )


# --- adding up the workers' records ------------------------------------------------------------


def sum_summaries(summaries: Sequence[Summary]) -> Summary:
    """One summary for several workers: every count added up, from the earliest start."""
    total = Summary(started=min((s.started for s in summaries), default=time.monotonic()))
    for part in summaries:
        for spec in dataclasses.fields(Summary):
            if spec.name not in _NOT_ADDED:
                setattr(total, spec.name, getattr(total, spec.name) + getattr(part, spec.name))
    # The workers worked side by side: they were all idle for at most the least idle one's
    # time, so the command's working time is its span less that.
    total.idle_s = min((s.idle_s for s in summaries), default=0.0)
    if summaries:  # the phases of one run: the first worker's stand for all
        total.phases = summaries[0].phases
    return total


# Times of one process, not counts.
_NOT_ADDED = {"started", "idle_s", "idle_since", "phases"}


def sum_progress(records: Sequence[WorkerProgress]) -> WorkerProgress:
    """The progress of several workers, field by field, whatever fields the record has:
    numbers add up, a flag holds if any worker's does, text is the last reported (``records``
    in the order they were reported)."""
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(WorkerProgress):
        column = [getattr(r, spec.name) for r in records]
        if all(isinstance(v, bool) for v in column):
            values[spec.name] = any(column)
        elif all(isinstance(v, int | float) for v in column):
            values[spec.name] = sum(column)
        else:
            values[spec.name] = next((v for v in reversed(column) if v), column[-1])
    return WorkerProgress(**values)


def describe(progress: WorkerProgress) -> str:
    """The workers' progress as one log line, in the words of a single worker's."""
    line = (
        f"embedded {progress.embedded} docs ({progress.rate_docs_per_s:,.0f} docs/s), "
        f"{progress.marked} durable and marked, failed {progress.failed}, "
        f"leases {progress.leases}"
    )
    if progress.reused:
        line += f", reused {progress.reused}"
    if progress.paused:
        line += ", paused (embedder resume)"
    if progress.waiting_for:
        line += f", waiting for {progress.waiting_for}"
    return line


# --- set-up -----------------------------------------------------------------------------------


def _noted(number: int, frame: object) -> None:
    """The handler of the stop signals while supervising: the wake-up pipe carries them."""


def _log_settings() -> LogSettings:
    root = logging.getLogger()
    json_lines = any(isinstance(h.formatter, logs.JsonFormatter) for h in root.handlers)
    return LogSettings(logging.getLevelName(root.getEffectiveLevel()), json_lines)


@contextlib.contextmanager
def _shared_metrics(settings: MetricsSettings | None) -> Iterator[str | None]:
    """With --metrics-port: a fresh directory for the workers' metric files (they inherit the
    variable naming it), served as one registry on the port."""
    if settings is None:
        yield None
        return
    directory = tempfile.mkdtemp(prefix="embedder-metrics-")
    previous = os.environ.get(MULTIPROC_DIR)
    os.environ[MULTIPROC_DIR] = directory
    try:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        try:
            server, thread = start_http_server(settings.port, addr=settings.host, registry=registry)
        except OSError as exc:
            raise ConfigurationError(
                f"--metrics-port {settings.port} on {settings.host}: {exc.strerror or exc}"
            ) from exc
        log.info(
            "metrics of every worker on http://%s:%d/metrics", settings.host, server.server_port
        )
        try:
            yield directory
        finally:
            server.shutdown()
            server.server_close()
            thread.join()
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_DIR, None)
        else:
            os.environ[MULTIPROC_DIR] = previous
        shutil.rmtree(directory, ignore_errors=True)

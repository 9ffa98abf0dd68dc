"""Is a worker still there? Its heartbeat's age, and on its own host its process.

A heartbeat alone says a worker is gone only once it expires (a lease TTL after its last
beat). On the host it ran on, the process answers sooner: a worker killed with SIGKILL is gone
the moment its process is. The heartbeat names the process precisely enough to tell (host,
pid, PID namespace, start time), so a container sharing the host's name but not its PIDs, or a
PID reused by a later process, is never taken for the worker.
"""

from __future__ import annotations

import datetime as dt
import enum
import os
import socket
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
# A gone worker stays in `embedder status` this long after its last heartbeat; a worker that
# registers removes such entries (without leases) from the control document.
FORGET_AFTER = dt.timedelta(minutes=10)


class Life(enum.StrEnum):
    ALIVE = "alive"
    SILENT = "silent"  # missed two heartbeats; its leases are still its own until they expire
    GONE = "gone"  # its process is gone, or its heartbeat expired: its leases can be taken


@dataclass(frozen=True, slots=True)
class ProcessRef:
    """Enough to find a process again and know it is the same one."""

    host: str
    pid: int | None
    pid_namespace: str = ""  # "" where the system has none to read (not Linux)
    started: int | None = None  # start time in clock ticks since boot (Linux); None: unknown

    @classmethod
    def current(cls) -> ProcessRef:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _pid_namespace("self"), _start_ticks(str(pid)))

    def gone(self) -> bool:
        """True only when certain: same host and PID namespace, and the process is not there
        (or is a zombie, or another process now has its PID). Elsewhere: False."""
        if self.pid is None or self.host != socket.gethostname():
            return False
        if self.pid_namespace != _pid_namespace("self"):
            return False
        if _PROC.is_dir():
            started = _start_ticks(str(self.pid))
            if started is None:
                return True
            return self.started is not None and started != self.started
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def life(
    process: ProcessRef,
    seen_at: dt.datetime | None,
    expires_at: dt.datetime | None,
    now: dt.datetime,
) -> Life:
    """A worker's state from its last heartbeat (beats come every third of the lease TTL)."""
    if expires_at is None or expires_at <= now or process.gone():
        return Life.GONE
    if seen_at is not None and now - seen_at > (expires_at - seen_at) * 2 / 3:
        return Life.SILENT
    return Life.ALIVE


def _pid_namespace(pid: str) -> str:
    try:
        return os.readlink(_PROC / pid / "ns" / "pid")
    except OSError:
        return ""


def _start_ticks(pid: str) -> int | None:
    """The process's start time (field 22 of /proc/PID/stat); None when it is not there or
    is a zombie (killed, not yet reaped: no longer a worker)."""
    try:
        stat = (_PROC / pid / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])

"""An exclusive, expiring lease on a consolidated output: one consolidator commits at a time.

The lease is a series of small records ``_lease/<generation>.json`` beside the output. The
holder is the writer of the highest generation. Taking the lease is creating the next
generation *exclusively*: ``O_CREAT | O_EXCL`` on a local or shared filesystem, and on an
object store a conditional put (S3 ``PutObject`` with ``If-None-Match: *``, GCS with
``ifGenerationMatch=0``; both answer 412 when the object exists). ``pyarrow.fs`` exposes no
conditional put, so on object stores the caller passes one (``ExclusiveCreate``, see
``embedder.storage.conditional_create``); without it the lease is refused unless the caller
says it is the only consolidator (``sole_holder``), when it is best-effort (check, then write).

Two consolidators can therefore never both create generation N+1: exactly one takes the lease.
A live holder renews its record; a holder that stops renewing (killed, hung) is taken over
once its record expires, or at once when it ran on this host and its process is gone.
Expiry compares the holder's deadline with the taker's clock, so clocks must agree within the
TTL's margin (the same bound as the queue's leases).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import orjson
import pyarrow as pa
import pyarrow.fs as pafs

from embedder.errors import ConfigurationError, StorageError
from embedder.storage import filesystems as storage

log = logging.getLogger(__name__)

# A leading underscore: pyarrow datasets, DuckDB globs of *.parquet and the consolidator's own
# listing all skip it.
LEASE_DIR = "_lease"
DEFAULT_TTL_S = 60.0

ExclusiveCreate = Callable[[pafs.FileSystem, str, bytes], bool]
"""Write ``data`` at ``path`` only if nothing is there; False when something was."""


@dataclass(frozen=True, slots=True)
class Holder:
    """One lease record: who holds the output, since when, and until when."""

    token: str  # this holder's own random id: a reused generation number is not a match
    generation: int
    host: str
    pid: int
    since: str  # ISO 8601, UTC
    expires_at: float  # Unix seconds, on the holder's clock
    released: bool = False

    @property
    def file_name(self) -> str:
        return f"{self.generation:012d}.json"

    def to_bytes(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Holder:
        return cls(**orjson.loads(raw))

    def describe(self) -> str:
        until = dt.datetime.fromtimestamp(self.expires_at, dt.UTC).isoformat(timespec="seconds")
        return f"host {self.host}, pid {self.pid}, since {self.since}, lease until {until}"

    def free(self, now: float) -> bool:
        """Released, expired, or held by a process of this host that no longer exists."""
        if self.released or self.expires_at < now:
            return True
        return self.host == socket.gethostname() and not storage.process_alive(self.pid)


class LeaseHeld(StorageError):
    def __init__(self, root: str, holder: Holder) -> None:
        super().__init__(
            f"{root} is held by another consolidator ({holder.describe()}); "
            "it commits alone, so this run steps aside"
        )
        self.holder = holder


class LeaseLost(StorageError):
    pass


def local_create_exclusive(fs: pafs.FileSystem, path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def best_effort_create(fs: pafs.FileSystem, path: str, data: bytes) -> bool:
    """For a filesystem without a conditional put: a race between two creators can let both
    believe they won. Pass an ``ExclusiveCreate`` for S3 or GCS to close it."""
    if storage.exists(fs, path):
        return False
    with fs.open_output_stream(path) as sink:
        sink.write(data)
    return True


class OutputLease:
    """``acquire`` (or ``LeaseHeld``), ``renew`` (or ``LeaseLost``), ``release``."""

    def __init__(
        self,
        fs: pafs.FileSystem,
        root: str,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        create_exclusive: ExclusiveCreate | None = None,
        clock: Callable[[], float] = time.time,
        sole_holder: bool = False,
        what: str = "the output lease",  # in the log, for leases on other things (a chunk)
    ) -> None:
        self._fs, self._root, self._ttl, self._clock = fs, root, ttl_s, clock
        self._what = what
        self._dir = f"{root}/{LEASE_DIR}"
        if create_exclusive is not None:
            self._create = create_exclusive
        elif storage.is_local(fs):
            self._create = local_create_exclusive
        elif sole_holder:
            log.warning(
                "no conditional create for %s: the output lease is best-effort, on the word "
                "that this is the only consolidator of %s",
                type(fs).__name__,
                root,
            )
            self._create = best_effort_create
        else:
            # Check-then-write lets two consolidators that look at once both take the lease.
            raise ConfigurationError(
                f"{root} is on a store without a conditional create ({type(fs).__name__}): "
                "two consolidators could both commit to it. Use s3:// (with embedder[s3]) or "
                "a local or shared filesystem, or say that this is the only consolidator "
                "(--sole-consolidator)"
            )
        self.holder: Holder | None = None
        self._lock = threading.Lock()  # the keeper's thread and the run both renew

    def acquire(self) -> None:
        self._fs.create_dir(self._dir, recursive=True)
        for _ in range(100):
            current = self._current()
            if current is not None and not current.free(self._clock()):
                raise LeaseHeld(self._root, current)
            generation = current.generation + 1 if current else 1
            mine = Holder(
                token=uuid.uuid4().hex,
                generation=generation,
                host=socket.gethostname(),
                pid=os.getpid(),
                since=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                expires_at=self._clock() + self._ttl,
            )
            if self._create(self._fs, self._path(mine), mine.to_bytes()):
                self.holder = mine
                if current is not None and not current.released:
                    log.warning("took over %s of %s", self._what, current.describe())
                self._forget_before(generation)
                return
            # Another consolidator created that generation first: look again.
        raise StorageError(f"could not settle the lease on {self._root}")

    def renew(self) -> None:
        """Push the expiry on; ``LeaseLost`` when another consolidator holds it now."""
        with self._lock:
            mine = self._confirmed()
            renewed = replace(mine, expires_at=self._clock() + self._ttl)
            storage.write_bytes_atomically(self._fs, self._path(renewed), renewed.to_bytes())
            self.holder = renewed

    def release(self) -> None:
        """Mark the record released (never delete it: generations only grow)."""
        with self._lock:
            if self.holder is None:
                return
            with contextlib.suppress(LeaseLost, OSError, pa.ArrowException):
                mine = self._confirmed()
                released = replace(mine, released=True, expires_at=self._clock())
                storage.write_bytes_atomically(self._fs, self._path(released), released.to_bytes())
            self.holder = None

    def current(self) -> Holder | None:
        """Who holds it now (a released or expired record included); None: never taken."""
        return self._current()

    def _confirmed(self) -> Holder:
        mine = self.holder
        if mine is None:
            raise LeaseLost(f"this run holds no lease on {self._root}")
        current = self._current()
        if current is None or current.token != mine.token:
            other = current.describe() if current else "nobody"
            raise LeaseLost(f"the lease on {self._root} was taken over ({other})")
        if mine.expires_at < self._clock():
            raise LeaseLost(f"the lease on {self._root} expired before it was renewed")
        return mine

    def _current(self) -> Holder | None:
        """The record of the highest generation (None when there is none)."""
        for _ in range(100):
            names = self._generations()
            if not names:
                return None
            path = f"{self._dir}/{names[-1]}"
            try:
                return Holder.from_bytes(storage.read_bytes(self._fs, path))
            except FileNotFoundError:
                continue  # removed by a taker between the listing and the read
            except (orjson.JSONDecodeError, TypeError):
                return self._unreadable(path, int(names[-1].removesuffix(".json")))
        raise StorageError(f"the lease records of {self._root} keep changing")

    def _unreadable(self, path: str, generation: int) -> Holder:
        """A record its creator died writing: held until a TTL after it was last written."""
        written = self._fs.get_file_info(path).mtime
        at = written.timestamp() if written is not None else self._clock()
        return Holder(
            token="unreadable",
            generation=generation,
            host="unknown (a damaged lease record)",
            pid=0,
            since=dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="seconds"),
            expires_at=at + self._ttl,
        )

    def _generations(self) -> list[str]:
        infos = self._fs.get_file_info(pafs.FileSelector(self._dir, allow_not_found=True))
        return sorted(
            i.base_name
            for i in infos
            if i.type == pafs.FileType.File and i.base_name.removesuffix(".json").isdigit()
        )

    def _forget_before(self, generation: int) -> None:
        for name in self._generations():
            if int(name.removesuffix(".json")) < generation:
                with contextlib.suppress(OSError, pa.ArrowException):
                    self._fs.delete_file(f"{self._dir}/{name}")

    def _path(self, holder: Holder) -> str:
        return f"{self._dir}/{holder.file_name}"


class LeaseKeeper:
    """Renews a held lease every ``ttl / 3`` from a thread while a long step runs;
    ``check`` raises in the caller's thread if a renewal found the lease lost."""

    def __init__(self, lease: OutputLease, ttl_s: float) -> None:
        self._lease, self._interval = lease, ttl_s / 3
        self._stop = threading.Event()
        self._lost: LeaseLost | None = None
        self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> None:
        """Renew now (so the next TTL is ours) or raise ``LeaseLost``."""
        if self._lost is not None:
            raise self._lost
        self._lease.renew()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._lease.renew()
            except LeaseLost as lost:
                self._lost = lost
                return
            except (OSError, pa.ArrowException, StorageError) as exc:  # tried at the next beat
                log.warning("renewing the output lease failed: %s", exc)

"""Filesystem steps shared by the shard writer and the consolidator, on any ``pyarrow.fs``.

On a local disk a file is published by writing a temporary name, fsyncing and renaming in
the target directory; object stores (S3, GCS) have no rename but make each object appear
whole when its upload completes, so there the final name is written directly.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from embedder.errors import StorageError

PARQUET_SUFFIX = ".parquet"


def is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def open_root(
    uri: str, *, create: bool = True, filesystem: pafs.FileSystem | None = None
) -> tuple[pafs.FileSystem, str]:
    """A filesystem and base path for a local path or a ``pyarrow.fs`` URI (s3://, gs://).

    With ``filesystem`` (an ``S3FileSystem`` with its credentials and endpoint, say), ``uri``
    is a path inside it.
    """
    try:
        if filesystem is not None:
            root = uri.split("://", 1)[-1].rstrip("/")
            if create:
                filesystem.create_dir(root, recursive=True)
            return filesystem, root
        if "://" not in uri:
            path = Path(uri).resolve()
            if create:
                path.mkdir(parents=True, exist_ok=True)
            return pafs.LocalFileSystem(), str(path)
        fs, path = pafs.FileSystem.from_uri(uri)
        if create:
            fs.create_dir(path, recursive=True)
        return fs, path.rstrip("/")
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot open {uri!r}: {exc}") from exc


def check_writable(fs: pafs.FileSystem, root: str) -> None:
    """Write and delete a small probe, so a read-only or full target fails before any work."""
    probe = f"{root}/.write-probe-{os.getpid()}"
    try:
        with fs.open_output_stream(probe) as sink:
            sink.write(b"probe")
        fs.delete_file(probe)
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot write to {root}: {exc}") from exc


def list_parquet(fs: pafs.FileSystem, root: str) -> list[pafs.FileInfo]:
    """Complete Parquet files directly under ``root``; names starting with '.' or '_' are
    work in progress or bookkeeping and are never listed."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot list {root}: {exc}") from exc
    return sorted(
        (
            i
            for i in infos
            if i.type == pafs.FileType.File
            and i.base_name.endswith(PARQUET_SUFFIX)
            and not i.base_name.startswith((".", "_"))
        ),
        key=lambda i: i.base_name,
    )


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)


def write_bytes_atomically(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    if not is_local(fs):
        with fs.open_output_stream(path) as sink:
            sink.write(data)
        return
    target = Path(path)
    staging = _staging(target)
    staging.write_bytes(data)
    _rename_durably(staging, target)


def publish_file(fs: pafs.FileSystem, source: Path, path: str) -> None:
    """Move a finished local file to ``path``, where readers see it whole or not at all."""
    if not is_local(fs):
        with source.open("rb") as handle, fs.open_output_stream(path) as sink:
            shutil.copyfileobj(handle, sink, length=8 << 20)
        source.unlink()
        return
    target = Path(path)
    staging = _staging(target)
    try:
        os.replace(source, staging)  # same filesystem: a rename, no copy
    except OSError:
        shutil.copyfile(source, staging)
        source.unlink()
    _rename_durably(staging, target)


def _staging(target: Path) -> Path:
    """Where a local file waits for its final name: beside it, and never listed (a dot)."""
    return target.with_name(f".{target.name}.tmp")


def _rename_durably(staging: Path, target: Path) -> None:
    fsync_file(staging)
    os.replace(staging, target)
    fsync_dir(target.parent)


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as source:
        data: bytes = source.read()
        return data


def move(fs: pafs.FileSystem, source: str, target: str) -> None:
    """Rename (local) or copy-then-delete (object stores)."""
    fs.move(source, target)
    if is_local(fs):
        fsync_dir(Path(target).parent)


def remove(fs: pafs.FileSystem, path: str) -> None:
    if exists(fs, path):
        fs.delete_file(path)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def process_alive(pid: int) -> bool:
    """Whether a process of this host still runs: the owner of a hot directory, or of an
    output lease taken on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""Where a file corpus's output keeps its shards and its bookkeeping.

::

    <output>/shards/chunk-000012.parquet      one shard per chunk, named for it
    <output>/_files/plan.json                  the chunks (embedder.files.plan)
    <output>/_files/leases/chunk-000012/_lease/<generation>.json   who works on a chunk
    <output>/_files/failures/chunk-000012.jsonl  the chunk's bad records, if any
    <output>/_files/done/chunk-000012.json     the chunk's mark: written after its shard

Names starting with ``_`` are skipped by the consolidator, DuckDB globs and pyarrow datasets.
Every file is written whole (an atomic rename, or one object upload), so any host that sees
the output reads a consistent state.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

from embedder.errors import StorageError
from embedder.storage import filesystems as storage

SHARDS = "shards"
BOOKKEEPING = "_files"


@dataclass(frozen=True, slots=True)
class FilesOutput:
    """A file corpus's output directory on any ``pyarrow.fs``."""

    uri: str
    fs: pafs.FileSystem
    root: str

    @classmethod
    def open(
        cls, uri: str, *, create: bool = True, filesystem: pafs.FileSystem | None = None
    ) -> FilesOutput:
        fs, root = storage.open_root(uri, create=create, filesystem=filesystem)
        return cls(uri.rstrip("/"), fs, root)

    @property
    def shards_uri(self) -> str:
        return f"{self.uri}/{SHARDS}"

    @property
    def shards(self) -> str:
        return f"{self.root}/{SHARDS}"

    @property
    def plan(self) -> str:
        return f"{self.root}/{BOOKKEEPING}/plan.json"

    @property
    def planning(self) -> str:
        """The lease of whoever is planning the chunks (the others wait for the plan)."""
        return f"{self.root}/{BOOKKEEPING}/planning"

    def lease_root(self, chunk: str) -> str:
        return f"{self.root}/{BOOKKEEPING}/leases/{chunk}"

    @property
    def leases(self) -> str:
        return f"{self.root}/{BOOKKEEPING}/leases"

    @property
    def done(self) -> str:
        return f"{self.root}/{BOOKKEEPING}/done"

    @property
    def failures(self) -> str:
        return f"{self.root}/{BOOKKEEPING}/failures"

    def done_path(self, chunk: str) -> str:
        return f"{self.done}/{chunk}.json"

    def failures_path(self, chunk: str) -> str:
        return f"{self.failures}/{chunk}.jsonl"

    def shard_path(self, chunk: str) -> str:
        return f"{self.shards}/{chunk}.parquet"

    def is_output(self) -> bool:
        """Whether a file-corpus run has planned this output."""
        return storage.exists(self.fs, self.plan)

    def names(self, directory: str, suffix: str) -> list[str]:
        """Names (without ``suffix``) of the complete files directly in ``directory``."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(f"cannot list {directory}: {exc}") from exc
        return sorted(
            i.base_name.removesuffix(suffix)
            for i in infos
            if i.type == pafs.FileType.File
            and i.base_name.endswith(suffix)
            and not i.base_name.startswith(".")
        )

    def make_dirs(self) -> None:
        for directory in (self.shards, self.done, self.failures, self.leases):
            self.fs.create_dir(directory, recursive=True)

"""``_manifest.json`` of the consolidated output: what is there, and where it came from."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import pyarrow.fs as pafs

from embedder.storage import filesystems as storage

# A leading underscore: pyarrow datasets (and so pandas, Polars and Spark) skip it when they
# read the directory as a table.
MANIFEST_NAME = "_manifest.json"


@dataclass(frozen=True, slots=True)
class OutputFile:
    name: str
    rows: int
    bytes: int
    sha256: str
    sources: list[str]
    created_at: str


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: str
    at: str
    rows_in: int
    rows_out: int
    duplicates_dropped: int
    sources: list[str]
    rewritten: list[str]
    bad_shards: dict[str, str]


@dataclass
class Manifest:
    model_id: str | None = None
    model_sha: str | None = None
    dimension: int | None = None
    normalized: bool | None = None
    # The queue (QueueSpec.key) whose rows this output holds; one output holds one queue's.
    queue: str | None = None
    # The embed key (model, revision and server options: shard metadata ``embedder.embed_key``)
    # of every row; None in outputs made before it was recorded (the next shard's is adopted).
    embed_key: str | None = None
    # The output lease generation of the run that wrote this manifest: a writer whose lease is
    # older refuses to replace it (see embedder.storage.consolidate).
    lease_generation: int = 0
    files: list[OutputFile] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return sum(f.rows for f in self.files)

    def consumed(self) -> set[str]:
        return {source for run in self.runs for source in run.sources}

    def to_bytes(self) -> bytes:
        body = asdict(self)
        body["version"] = 1
        body["total_rows"] = self.total_rows
        body["runs"] = body["runs"][-1000:]  # history is bounded; files are listed in full
        return orjson.dumps(body, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        body: dict[str, Any] = orjson.loads(raw)
        return cls(
            model_id=body.get("model_id"),
            model_sha=body.get("model_sha"),
            dimension=body.get("dimension"),
            normalized=body.get("normalized"),
            queue=body.get("queue"),
            embed_key=body.get("embed_key"),
            lease_generation=body.get("lease_generation", 0),
            files=[OutputFile(**f) for f in body.get("files", [])],
            runs=[RunRecord(**r) for r in body.get("runs", [])],
        )


def load(fs: pafs.FileSystem, root: str) -> Manifest:
    path = f"{root}/{MANIFEST_NAME}"
    if not storage.exists(fs, path):
        return Manifest()
    return Manifest.from_bytes(storage.read_bytes(fs, path))


def save(fs: pafs.FileSystem, root: str, manifest: Manifest) -> None:
    storage.write_bytes_atomically(fs, f"{root}/{MANIFEST_NAME}", manifest.to_bytes())


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

"""``embedder verify --doc ID``: which model made a doc's vector, from its mark and its row.

The mark on the MongoDB doc names the model, its revision, the embed key (model and options)
and the shard; the Parquet row (in the consolidated output, or still in its shard) carries the
model, revision and the hash of the text it was made from. Comparing that hash with the hash
of the doc's text now says whether the vector is still the text's.

The doc's row is the one in the shard its mark names while that shard waits for
consolidation, else its row in the consolidated output. It is right when it exists, once in
the output, from the model (and embed key) the mark names and from the text the doc holds
now (and the mark's text, where the mark keeps its hash).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow.compute as pc
import pyarrow.dataset as ds
from bson import ObjectId, json_util
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from embedder.errors import QueueError, StorageError
from embedder.ids import encode_id
from embedder.queue.marks import DoneMark, FailedMark, Mark, read_mark
from embedder.queue.spec import QueueSpec
from embedder.storage import filesystems as storage
from embedder.storage import manifest as mf
from embedder.storage.schema import ShardMetadata
from embedder.worker.documents import Doc, to_doc


def parse_doc_id(text: str) -> list[Any]:
    """The ids a command-line value may mean: JSON/extended JSON (``42``, ``{"$oid": ...}``),
    else the string itself, and an ObjectId when it looks like one."""
    candidates: list[Any] = []
    with contextlib.suppress(ValueError, TypeError):
        candidates.append(json_util.loads(text))
    candidates.append(text)
    if ObjectId.is_valid(text):
        candidates.append(ObjectId(text))
    unique: list[Any] = []
    for value in candidates:
        if not any(type(value) is type(u) and value == u for u in unique):
            unique.append(value)
    return unique


@dataclass
class Lineage:
    doc_id: Any
    found: bool = False
    mark: Mark | None = None
    stored_mark: dict[str, Any] | None = None  # the target field as stored, shown verbatim
    text_hash_now: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.found and not self.problems

    @property
    def model(self) -> str | None:
        return self.mark.model_ref if isinstance(self.mark, DoneMark) else None

    def as_dict(self) -> dict[str, Any]:
        plain: dict[str, Any] = json.loads(
            json_util.dumps(
                {
                    "doc_id": self.doc_id,
                    "found": self.found,
                    "model": self.model,
                    "mark": self.stored_mark,
                    "text_hash_now": self.text_hash_now,
                    "rows": self.rows,
                    "problems": self.problems,
                    "ok": self.ok,
                }
            )
        )
        return plain

    def lines(self) -> list[str]:
        if not self.found:
            return [f"doc {self.doc_id!r}: not in the collection"]
        lines = [f"doc {self.doc_id!r}:"]
        mark = self.mark
        if isinstance(mark, DoneMark):
            lines.append(
                f"  embedded by {mark.model} @ {mark.model_sha} "
                f"(embed key {mark.embed_key or '?'}) at {mark.at}, shard {mark.shard}"
            )
        elif isinstance(mark, FailedMark):
            lines.append(f"  failed: {mark.reason}")
        else:
            lines.append("  not embedded yet (pending)")
        for row in self.rows:
            agrees = (
                "matches the text now"
                if row["text_hash"] == self.text_hash_now
                else ("from another text than the doc holds now")
            )
            lines.append(
                f"  row in {row['file']}: {row['model']} @ {row['model_sha']}, embedded "
                f"{row['embedded_at']}, text hash {row['text_hash']} ({agrees})"
            )
        lines.extend(f"  FAILED: {problem}" for problem in self.problems)
        if not self.problems:
            done = isinstance(mark, DoneMark)
            lines.append("  OK" if done else "  OK (not marked done: no row expected)")
        return lines


async def lineage(
    client: AsyncMongoClient[dict[str, Any]],
    spec: QueueSpec,
    candidates: list[Any],
    *,
    consolidated_uri: str,
    shards_uri: str,
) -> Lineage:
    docs = client[spec.database][spec.collection]
    raw = None
    try:
        for doc_id in candidates:
            raw = await docs.find_one({"_id": doc_id}, {spec.text_field: 1, spec.target_field: 1})
            if raw is not None:
                break
    except PyMongoError as exc:
        raise QueueError(f"reading doc {candidates[0]!r} failed: {exc}") from exc
    if raw is None:
        return Lineage(candidates[0])
    found = Lineage(raw["_id"], found=True)
    stored = raw.get(spec.target_field)
    found.mark = read_mark(stored)
    if isinstance(stored, dict):
        found.stored_mark = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in stored.items()}
    now = to_doc(raw, spec.text_field)
    found.text_hash_now = now.text_hash.hex() if isinstance(now, Doc) else None
    key, kind = encode_id(raw["_id"])
    found.rows = _rows(consolidated_uri, key, kind, manifest=True) + (
        _rows(shards_uri, key, kind, manifest=False)
    )
    found.problems = _problems(found)
    return found


def _problems(found: Lineage) -> list[str]:
    """What is wrong with the doc's row, judged against its mark and its text now."""
    mark = found.mark
    in_output = [row for row in found.rows if row["in_output"]]
    if not isinstance(mark, DoneMark):
        # Pending or failed: its vector is yet to come, and none may be in the output.
        if in_output:
            return ["a row in the consolidated output, but the doc is not marked done"]
        return []
    named = [r for r in found.rows if not r["in_output"] and r["file"] == mark.shard]
    current = named or in_output
    if not current:
        return ["no row found in the consolidated output or the shards"]
    problems = []
    if len(in_output) > 1:
        problems.append(f"{len(in_output)} rows in the consolidated output (one expected)")
    named_model = f"{mark.model} @ {mark.model_sha or ''}"
    for row in current:
        model = f"{row['model']} @ {row['model_sha'] or ''}"
        key, named_key = row["embed_key"], mark.embed_key
        if model != named_model or (key and named_key and key != named_key):
            problems.append(
                f"row in {row['file']} is from another model ({model}, embed key {key or '?'}) "
                f"than its mark names ({named_model}, embed key {named_key or '?'})"
            )
        if row["text_hash"] != found.text_hash_now:
            problems.append(f"row in {row['file']} is from another text than the doc holds now")
        if mark.text_hash and row["text_hash"] != mark.text_hash.hex():
            problems.append(f"row in {row['file']} is from another text than its mark names")
    return problems


def _rows(uri: str, key: str, kind: str, *, manifest: bool) -> list[dict[str, Any]]:
    try:
        fs, root = storage.open_root(uri, create=False)
        if manifest:
            paths = [f"{root}/{f.name}" for f in mf.load(fs, root).files]
        else:
            paths = [i.path for i in storage.list_parquet(fs, root)]
    except (StorageError, OSError, ValueError):
        return []
    if not paths:
        return []
    dataset = ds.dataset(paths, filesystem=fs, format="parquet")
    columns = sorted({"model", "model_sha", "text_hash", "embedded_at"} & set(dataset.schema.names))
    expression = (pc.field("_id") == key) & (pc.field("_id_kind") == kind)
    rows = []
    for fragment in dataset.get_fragments():
        embed_key = ShardMetadata.from_schema(fragment.physical_schema).embed_key
        for row in fragment.to_table(columns=columns, filter=expression).to_pylist():
            text_hash = row.get("text_hash")
            rows.append(
                {
                    "file": fragment.path.rsplit("/", 1)[-1],
                    "in_output": manifest,
                    "embed_key": embed_key,
                    "model": row.get("model"),
                    "model_sha": row.get("model_sha"),
                    "text_hash": text_hash.hex() if isinstance(text_hash, bytes) else None,
                    "embedded_at": str(row.get("embedded_at")),
                }
            )
    return rows

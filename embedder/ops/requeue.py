"""``embedder requeue``: put embedded or failed docs back in the work queue.

Re-queueing a doc removes its target field, which puts it back in the work queue's partial
index; the next claim pass finds it. Selections:

* by model: docs embedded by ``model_id`` (or ``model_id@model_sha``);
* by failure: docs that failed, optionally only those whose reason contains a string;
* by changed text: docs whose text no longer has the hash stored in their mark (workers
  store it with ``--store-text-hash``). Finding them reads every embedded doc's text: a scan,
  in bounded batches in ``_id`` order, a BSON type at a time (MongoDB's range predicates
  never cross types).

Every batch's update repeats the selection's condition, so a run that is interrupted or
repeated re-queues each doc at most once and never one that changed state meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection

from embedder import ids
from embedder.errors import ConfigurationError
from embedder.queue.marks import (
    DoneMark,
    done_query,
    failed_query,
    read_mark,
    status_field,
    still_hashed,
    text_hash_field,
)
from embedder.queue.spec import QueueSpec
from embedder.worker.documents import Doc, to_doc


@dataclass(frozen=True, slots=True)
class Selection:
    model: str | None = None  # model_id, or model_id@model_sha
    failed: bool = False
    reason: str | None = None  # with failed: only reasons containing this
    changed_text: bool = False

    def __post_init__(self) -> None:
        chosen = (self.model is not None) + self.failed + self.changed_text
        if chosen != 1:
            raise ConfigurationError(
                "choose one selection: --model, --failed (with --reason) or --changed-text"
            )
        if self.reason is not None and not self.failed:
            raise ConfigurationError("--reason goes with --failed")

    def describe(self) -> str:
        if self.model is not None:
            return f"docs embedded by {self.model}"
        if self.failed:
            return "failed docs" + (
                f" whose reason contains {self.reason!r}" if self.reason else ""
            )
        return "docs whose text changed since they were embedded"


@dataclass(slots=True)
class RequeueReport:
    selection: str
    dry_run: bool
    matched: int = 0
    requeued: int = 0
    without_hash: int = 0  # with --changed-text: embedded docs whose mark holds no text hash

    def as_dict(self) -> dict[str, Any]:
        return {
            "selection": self.selection,
            "dry_run": self.dry_run,
            "matched": self.matched,
            "requeued": self.requeued,
            "without_hash": self.without_hash,
        }

    def lines(self) -> list[str]:
        done = f"would re-queue {self.matched}" if self.dry_run else f"re-queued {self.requeued}"
        lines = [f"{self.selection}: {self.matched} matched, {done}"]
        if self.without_hash:
            lines.append(
                f"{self.without_hash} embedded docs have no stored text hash (embedded without "
                "--store-text-hash): a change to their text cannot be seen"
            )
        return lines


def condition(spec: QueueSpec, selection: Selection) -> dict[str, Any]:
    """The filter a doc must still match to be re-queued (led by the done index's key)."""
    target = spec.target_field
    if selection.model is not None:
        model_id, _, sha = selection.model.partition("@")
        return done_query(target, model=model_id, model_sha=sha or None)
    if selection.failed:
        return failed_query(target, reason_contains=selection.reason)
    return done_query(target)


async def requeue(
    client: AsyncMongoClient[dict[str, Any]],
    spec: QueueSpec,
    selection: Selection,
    *,
    dry_run: bool,
    batch_size: int = 1000,
) -> RequeueReport:
    docs = client[spec.database][spec.collection]
    report = RequeueReport(selection.describe(), dry_run)
    if selection.changed_text:
        await _changed_text(docs, spec, report, batch_size)
        return report
    query = condition(spec, selection)
    report.matched = await docs.count_documents(query, hint=spec.done_index_name)
    if dry_run:
        return report
    while True:
        cursor = docs.find(query, {"_id": 1}, hint=spec.done_index_name).limit(batch_size)
        ids = [d["_id"] async for d in cursor]
        if not ids:
            return report
        report.requeued += await _unset(docs, spec, ids, query)


async def _changed_text(
    docs: AsyncCollection[dict[str, Any]], spec: QueueSpec, report: RequeueReport, batch_size: int
) -> None:
    last: Any = None
    while True:
        last = await changed_text_batch(docs, spec, report, batch_size, after=last)
        if last is None:
            return


async def changed_text_batch(
    docs: AsyncCollection[dict[str, Any]],
    spec: QueueSpec,
    report: RequeueReport,
    batch_size: int,
    *,
    after: Any,
) -> Any:
    """Check (and unless a dry run, re-queue) one batch of embedded docs after ``after`` in
    ``_id`` order; the last ``_id`` checked, or None past the end."""
    target = spec.target_field
    base = condition(spec, Selection(changed_text=True))
    # The status too: read_mark reads a mark by it.
    projection = {spec.text_field: 1, status_field(target): 1, text_hash_field(target): 1}

    async def read(clause: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        # The _id index, walked in order: one pass over the collection in all, never a sort
        # of every embedded doc per batch.
        query = {**base, "_id": clause}
        cursor = docs.find(query, projection, hint=[("_id", 1)]).sort("_id", 1).limit(limit)
        return [d async for d in cursor]

    batch = await ids.read_range(read, batch_size, ids.after(after))
    if not batch:
        return None
    changed: list[UpdateOne] = []
    for raw in batch:
        stored = _stored_hash(raw.get(target))
        if stored is None:
            report.without_hash += 1
            continue
        if embedded_text_changed(to_doc(raw, spec.text_field), stored):
            # Only if the mark still holds the hash compared against.
            still = {"_id": raw["_id"], **base, **still_hashed(target, stored)}
            changed.append(UpdateOne(still, {"$unset": {target: ""}}))
    report.matched += len(changed)
    if changed and not report.dry_run:
        result = await docs.bulk_write(changed, ordered=False)
        report.requeued += result.modified_count
    return batch[-1]["_id"]


def embedded_text_changed(now: object, embedded_hash: bytes) -> bool:
    """The changed-text rule: a doc whose text now (``to_doc``'s answer: a ``Doc``, or why it
    has no usable text) is not the text whose hash its done mark keeps."""
    return not isinstance(now, Doc) or now.text_hash != embedded_hash


def _stored_hash(value: Any) -> bytes | None:
    """The text hash a done mark keeps; None when the doc was embedded without one."""
    mark = read_mark(value)
    return mark.text_hash if isinstance(mark, DoneMark) else None


async def _unset(
    docs: AsyncCollection[dict[str, Any]], spec: QueueSpec, ids: list[Any], still: dict[str, Any]
) -> int:
    result = await docs.update_many(
        {**still, "_id": {"$in": ids}}, {"$unset": {spec.target_field: ""}}
    )
    return result.modified_count

"""The mark in a doc's target field: what a worker writes once a doc is done or failed.

One owner for the record: the queue writes marks through ``to_bson``; status, verify, lineage,
requeue and the change watcher read them through ``read_mark`` and select them with the queries
below, so a field name is spelled here only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bson import Binary

DONE = "done"
FAILED = "failed"
_REASON_CHARS = 500  # a reason is a line for an operator, not a traceback


@dataclass(frozen=True, slots=True)
class DoneMark:
    """The doc's vector is durable in ``shard``, made by ``model`` with these options."""

    model: str
    model_sha: str | None
    shard: str
    embed_key: str = ""  # the model with its options (embedder.identity.embed_key)
    # The hash of the text embedded, kept with --store-text-hash so a changed text is found.
    text_hash: bytes | None = None
    at: dt.datetime | None = None  # set when read back; to_bson takes the time it writes

    def hashing(self, text_hash: bytes) -> DoneMark:
        return dataclasses.replace(self, text_hash=text_hash)

    def to_bson(self, at: dt.datetime) -> dict[str, Any]:
        value: dict[str, Any] = {
            "status": DONE,
            "model": self.model,
            "model_sha": self.model_sha,
            "embed_key": self.embed_key,
            "shard": self.shard,
            "at": at,
        }
        if self.text_hash is not None:
            value["text_hash"] = Binary(self.text_hash)
        return value

    @classmethod
    def from_bson(cls, raw: Mapping[str, Any]) -> DoneMark:
        text_hash = raw.get("text_hash")
        at = raw.get("at")
        return cls(
            model=str(raw.get("model") or ""),
            model_sha=raw.get("model_sha"),
            shard=str(raw.get("shard") or ""),
            embed_key=str(raw.get("embed_key") or ""),
            text_hash=bytes(text_hash) if isinstance(text_hash, bytes) else None,
            at=at if isinstance(at, dt.datetime) else None,
        )

    @property
    def model_ref(self) -> str:
        """``model@revision``, as ``verify --doc`` shows it."""
        return f"{self.model}@{self.model_sha}"


@dataclass(frozen=True, slots=True)
class FailedMark:
    """The doc cannot be embedded, for ``reason``; it stays out of the queue until re-queued."""

    reason: str
    at: dt.datetime | None = None

    def to_bson(self, at: dt.datetime) -> dict[str, Any]:
        return {"status": FAILED, "reason": self.reason[:_REASON_CHARS], "at": at}

    @classmethod
    def from_bson(cls, raw: Mapping[str, Any]) -> FailedMark:
        at = raw.get("at")
        return cls(str(raw.get("reason")), at if isinstance(at, dt.datetime) else None)


Mark = DoneMark | FailedMark


def read_mark(value: object) -> Mark | None:
    """The mark a target field holds; None for a pending doc or a value embedder did not write."""
    if not isinstance(value, Mapping):
        return None
    if value.get("status") == DONE:
        return DoneMark.from_bson(value)
    if value.get("status") == FAILED:
        return FailedMark.from_bson(value)
    return None


def is_mark(value: object) -> bool:
    """Whether a target field's value is one embedder writes (a done or a failed mark)."""
    return read_mark(value) is not None


# --- selecting marked docs (every query is led by the done index's key, the status) ----------


def status_field(target: str) -> str:
    return f"{target}.status"


def done_query(
    target: str, *, model: str | None = None, model_sha: str | None = None
) -> dict[str, Any]:
    """Docs marked done; by ``model`` (and its revision) when given."""
    query: dict[str, Any] = {status_field(target): DONE}
    if model is not None:
        query[f"{target}.model"] = model
    if model_sha:
        query[f"{target}.model_sha"] = model_sha
    return query


def failed_query(target: str, *, reason_contains: str | None = None) -> dict[str, Any]:
    query: dict[str, Any] = {status_field(target): FAILED}
    if reason_contains:
        query[f"{target}.reason"] = {"$regex": re.escape(reason_contains)}
    return query


def still_hashed(target: str, text_hash: bytes) -> dict[str, Any]:
    """The condition that a done mark still names ``text_hash`` (nothing re-marked it since)."""
    return {f"{target}.text_hash": Binary(text_hash)}


def text_hash_field(target: str) -> str:
    return f"{target}.text_hash"


def reason_field(target: str) -> str:
    return f"{target}.reason"

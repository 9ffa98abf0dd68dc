"""What a work queue is: collection, filter, fields, and the index that serves it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from embedder.errors import ConfigurationError
from embedder.queue import marks

DEFAULT_DATABASE = "twitter_data"
DEFAULT_TARGET_FIELD = "gemma_embedded_768"
DEFAULT_TEXT_FIELD = "text"
DEFAULT_FILTER: Mapping[str, Any] = {"lang": "en", "classified": True}
DEFAULT_EXCLUDE: Mapping[str, Any] = {"retweeted": None}
CONTROL_COLLECTION = "embedder_control"


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A queue is pending docs matching ``filter`` whose target field is still empty.

    ``exclude`` holds the extra predicates of the index's partial filter (for tweets,
    ``retweeted: null``); with ``{target_field: null}`` they form ``partial_filter``, which
    every queue query repeats verbatim so that MongoDB can use the partial index.
    """

    collection: str
    database: str = DEFAULT_DATABASE
    filter: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_FILTER))
    exclude: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_EXCLUDE))
    text_field: str = DEFAULT_TEXT_FIELD
    target_field: str = DEFAULT_TARGET_FIELD
    control_collection: str = CONTROL_COLLECTION

    def __post_init__(self) -> None:
        if not self.collection:
            raise ConfigurationError("a collection name is required (--collection)")
        if not self.text_field or self.text_field.startswith("$"):
            raise ConfigurationError(f"invalid text field {self.text_field!r}")
        if not self.target_field or self.target_field.startswith("$") or "." in self.target_field:
            raise ConfigurationError(
                f"invalid target field {self.target_field!r} (a top-level name)"
            )
        if self.target_field in self.filter or self.target_field in self.exclude:
            raise ConfigurationError("the target field cannot also be part of the queue filter")
        if "_id" in self.filter:
            raise ConfigurationError(
                "the queue filter cannot constrain _id (the queue pages by _id)"
            )

    @property
    def partial_filter(self) -> dict[str, Any]:
        return {**self.exclude, self.target_field: None}

    @property
    def index_name(self) -> str:
        return _suffixed("embedding_work_queue", self.target_field)

    @property
    def done_index_name(self) -> str:
        return _suffixed("embedding_done", self.target_field)

    @property
    def index_keys(self) -> list[tuple[str, int]]:
        keys = [*((name, 1) for name in self.filter), ("_id", 1)]
        if self.target_field != DEFAULT_TARGET_FIELD or not self.filter:
            # Another target's queue index ends with its own field (null in every entry, so
            # the order stays _id's): MongoDB refuses two indexes on one key pattern that
            # differ only in their partial filter. So does an empty filter's, which would
            # otherwise be the _id index's key pattern.
            keys.append((self.target_field, 1))
        return keys

    @property
    def status_path(self) -> str:
        return marks.status_field(self.target_field)

    def pending_query(self, id_range: Mapping[str, Any] | None = None) -> dict[str, Any]:
        query: dict[str, Any] = {**self.filter, **self.partial_filter}
        if id_range:
            query["_id"] = dict(id_range)
        return query

    @property
    def key(self) -> str:
        """Names this queue in the control collection; a different filter is another queue."""
        canonical = orjson.dumps(
            {"filter": self.filter, "exclude": self.exclude},
            option=orjson.OPT_SORT_KEYS,
            default=str,
        )
        digest = hashlib.sha256(canonical).hexdigest()[:12]
        return f"{self.database}.{self.collection}:{self.target_field}:{digest}"


def _suffixed(base: str, target_field: str) -> str:
    # The seed's target keeps the plain names; another target (another model) gets its own.
    return base if target_field == DEFAULT_TARGET_FIELD else f"{base}__{target_field}"

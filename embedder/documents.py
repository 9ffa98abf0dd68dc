"""Reading a document's text and deciding whether it can be embedded at all."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from embedder.lineage import hash_utf8

_MISSING = object()


@dataclass(frozen=True, slots=True)
class Doc:
    """A claimed document that is ready to embed."""

    id: Any
    text: str
    size: int = 0  # bytes of the text as UTF-8
    text_hash: bytes = b""  # embedder.lineage.text_hash of the text


@dataclass(frozen=True, slots=True)
class Rejected:
    """A document that fails for good before it reaches the fleet, and why."""

    id: Any
    reason: str


def get_path(document: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (``extended_tweet.full_text``), or ``_MISSING``."""
    value: Any = document
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def to_doc(document: Mapping[str, Any], text_field: str) -> Doc | Rejected:
    doc_id = document["_id"]
    value = get_path(document, text_field)
    if value is _MISSING or value is None:
        return Rejected(doc_id, f"missing text field {text_field!r}")
    if not isinstance(value, str):
        return Rejected(
            doc_id, f"text field {text_field!r} is {type(value).__name__}, not a string"
        )
    if not value.strip():
        return Rejected(doc_id, f"text field {text_field!r} is empty")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates cannot be sent as JSON text
        return Rejected(doc_id, f"text field {text_field!r} is not valid Unicode")
    return Doc(doc_id, value, len(encoded), hash_utf8(encoded))

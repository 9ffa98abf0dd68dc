"""Reading a document's text and deciding whether it can be embedded at all."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bson.codec_options import CodecOptions

from embedder.identity import hash_utf8

MISSING = object()


class FailureCause(enum.StrEnum):
    """Why a document failed for good; the value is the ``docs_failed{cause}`` label."""

    MISSING_FIELD = "missing_text"
    NOT_A_STRING = "not_string"
    EMPTY = "empty_text"
    INVALID_UNICODE = "invalid_unicode"
    TOO_LARGE = "too_large"
    REJECTED_BY_SERVER = "rejected_by_server"

    @property
    def points_at_settings(self) -> bool:
        """A cause that, shared by every doc of a claim, says more about the options (the text
        field, the filter) than about the docs."""
        return self in (FailureCause.MISSING_FIELD, FailureCause.NOT_A_STRING)


@dataclass(frozen=True, slots=True)
class Doc:
    """A claimed document that is ready to embed."""

    id: Any
    text: str
    size: int = 0  # bytes of the text as UTF-8
    text_hash: bytes = b""  # embedder.identity.text_hash of the text


@dataclass(frozen=True, slots=True)
class Embedded:
    """What marking needs of a doc once its text went to the fleet: no text."""

    id: Any
    text_hash: bytes

    @classmethod
    def of(cls, doc: Doc) -> Embedded:
        return cls(doc.id, doc.text_hash)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A document that fails for good, why (for people) and its cause (for counting)."""

    id: Any
    reason: str
    cause: FailureCause = FailureCause.REJECTED_BY_SERVER


def reading_options(base: CodecOptions[Any]) -> CodecOptions[Any]:
    """How docs are decoded wherever their texts are read (claims, the change watcher).

    MongoDB stores strings without checking their UTF-8, and pymongo's strict decoding fails
    the whole reply (a claim, a scan batch) on one bad string. With surrogateescape the bad
    bytes arrive as lone surrogates, and ``to_doc`` rejects that doc alone as not valid
    Unicode. (pymongo accepts this handler in CodecOptions, not as a client option.)
    """
    return base.with_options(unicode_decode_error_handler="surrogateescape")


def get_path(document: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (``extended_tweet.full_text``), or ``MISSING``."""
    value: Any = document
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return MISSING
        value = value[part]
    return value


def to_doc(document: Mapping[str, Any], text_field: str) -> Doc | Rejected:
    doc_id = document["_id"]
    value = get_path(document, text_field)
    if value is MISSING or value is None:
        return Rejected(doc_id, f"missing text field {text_field!r}", FailureCause.MISSING_FIELD)
    if not isinstance(value, str):
        return Rejected(
            doc_id,
            f"text field {text_field!r} is {type(value).__name__}, not a string",
            FailureCause.NOT_A_STRING,
        )
    if not value.strip():
        return Rejected(doc_id, f"text field {text_field!r} is empty", FailureCause.EMPTY)
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates: what a string MongoDB holds as invalid UTF-8 reads as (see
        # reading_options); JSON cannot carry them.
        return Rejected(
            doc_id, f"text field {text_field!r} is not valid Unicode", FailureCause.INVALID_UNICODE
        )
    return Doc(doc_id, value, len(encoded), hash_utf8(encoded))

"""Test collections: eligible tweets beside every kind of doc the queue must leave alone."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from bson import ObjectId
from bson.raw_bson import RawBSONDocument

from embedder.serve.backends import HashBackend, normalized

EMOJI = "🎉🔥😂👍🏽🇫🇷"
SCRIPTS = ["naïve café", "Москва", "東京タワー", "مرحبا بالعالم", "हिन्दी", "ελληνικά", EMOJI]


@dataclass
class Corpus:
    docs: list[dict[str, Any]]
    eligible: dict[Any, str] = field(default_factory=dict)  # id -> text, expected embedded
    bad: dict[Any, str] = field(default_factory=dict)  # id -> expected reason fragment
    ineligible: list[Any] = field(default_factory=list)  # must stay untouched


def id_maker(kind: str) -> Callable[[int], Any]:
    if kind == "int":
        return lambda i: 1_500_000_000_000_000_000 + i  # tweet-sized ids
    if kind == "string":
        return lambda i: f"tweet-{i:06d}"
    if kind == "objectid":
        base = int(str(ObjectId())[:8], 16)
        return lambda i: ObjectId(f"{base:08x}{i:016x}")
    raise ValueError(kind)


def tweets(
    n_eligible: int = 400,
    *,
    id_kind: str = "int",
    text_field: str = "text",
    duplicate_share: float = 0.0,
) -> Corpus:
    """``duplicate_share`` of the eligible docs repeat the text of an earlier one verbatim."""
    make_id = id_maker(id_kind)
    corpus = Corpus([])
    counter = iter(range(10**6))

    def add(doc: dict[str, Any]) -> Any:
        doc["_id"] = make_id(next(counter))
        corpus.docs.append(doc)
        return doc["_id"]

    for i in range(n_eligible):
        text = f"tweet number {i} about {SCRIPTS[i % len(SCRIPTS)]} {'and more ' * (i % 7)}"
        if i == 7:
            text = "x " * 50_000  # a 100k-character text
        if int((i + 1) * duplicate_share) > int(i * duplicate_share) and corpus.eligible:
            earlier = list(dict.fromkeys(corpus.eligible.values()))
            text = earlier[(i * 7919) % len(earlier)]
        doc_id = add({"lang": "en", "classified": True, **_text(text_field, text)})
        corpus.eligible[doc_id] = text
    for i in range(30):
        corpus.ineligible.append(
            add(
                {
                    "lang": "en",
                    "classified": True,
                    "retweeted": True,
                    **_text(text_field, f"RT retweet {i}"),
                }
            )
        )
        corpus.ineligible.append(
            add({"lang": "es", "classified": True, **_text(text_field, f"hola {i}")})
        )
        corpus.ineligible.append(
            add({"lang": "en", "classified": False, **_text(text_field, f"raw {i}")})
        )
    corpus.bad[add({"lang": "en", "classified": True, **_text(text_field, "")})] = "is empty"
    corpus.bad[add({"lang": "en", "classified": True, **_text(text_field, "   \n\t ")})] = (
        "is empty"
    )
    corpus.bad[add({"lang": "en", "classified": True})] = "missing text"
    corpus.bad[add({"lang": "en", "classified": True, **_text(text_field, 12345)})] = "not a string"
    corpus.bad[add({"lang": "en", "classified": True, **_text(text_field, None)})] = "missing text"
    return corpus


def mixed_ids(n_per_kind: int) -> Corpus:
    """``tweets`` of int, string and ObjectId ids in one collection: three BSON types, which
    MongoDB's range predicates never compare with one another."""
    mixed = Corpus([])
    for kind in ("int", "string", "objectid"):
        part = tweets(n_per_kind, id_kind=kind)
        mixed.docs += part.docs
        mixed.eligible.update(part.eligible)
        mixed.bad.update(part.bad)
        mixed.ineligible += part.ineligible
    return mixed


def _text(field_path: str, value: Any) -> dict[str, Any]:
    parts = field_path.split(".")
    doc: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        doc = {part: doc}
    return doc


def expected_vectors(texts: list[str], dimension: int, max_input_length: int = 512) -> np.ndarray:
    """What the hash-backed test server answers for ``texts`` (with its auto-truncation)."""
    backend = HashBackend(dimension, max_input_length)
    ids = [t.truncated(max_input_length, "Right").ids for t in backend.tokenize(texts)]
    return normalized(backend.embed(ids))


# A cut-off two-byte sequence, and a byte UTF-8 never uses.
INVALID_UTF8 = b"caf\xc3 au lait \xff"


def raw_doc(doc_id: int, text: bytes) -> RawBSONDocument:
    """A document whose text is the given bytes as stored, valid UTF-8 or not."""

    def string(name: bytes, value: bytes) -> bytes:
        return b"\x02" + name + b"\x00" + struct.pack("<i", len(value) + 1) + value + b"\x00"

    body = (
        b"\x12_id\x00"
        + struct.pack("<q", doc_id)
        + string(b"text", text)
        + string(b"lang", b"en")
        + b"\x08classified\x00\x01"
    )
    return RawBSONDocument(struct.pack("<i", len(body) + 5) + body + b"\x00")

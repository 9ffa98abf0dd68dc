"""Each distinct text goes to the fleet once.

A claimed doc whose text is already being embedded waits for that vector; one whose text was
embedded earlier in this run (kept in memory, bounded in bytes) or in an earlier run (the
vector cache on disk) gets that vector at once. Only the first doc of each new text is sent.
Equal text hashes under one embed key give equal vectors (embedder.identity), so every doc
still gets exactly the vector it would have got on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from cachetools import LRUCache

from embedder.errors import ConfigurationError
from embedder.worker.documents import Doc
from embedder.worker.vector_cache import VectorCache


@dataclass(frozen=True, slots=True)
class ReuseSettings:
    enabled: bool = True  # each distinct text to the fleet once
    vector_cache_bytes: int = 4 << 30  # vectors kept across runs on the hot tier; 0: none
    memory_bytes: int = 256 << 20  # recent vectors kept in memory within a run

    def __post_init__(self) -> None:
        if min(self.vector_cache_bytes, self.memory_bytes) < 0:
            raise ConfigurationError("memory and cache sizes must be 0 or more")


@dataclass(slots=True)
class Split[T]:
    """A claim's docs sorted by what their text needs."""

    send: list[Doc] = field(default_factory=list)
    reused: list[tuple[Doc, T]] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    from_run: int = 0
    from_cache: int = 0


class TextReuse[T]:
    def __init__(self, cache: VectorCache | None, memory_bytes: int, dimension: int) -> None:
        self._cache = cache
        self._recent: LRUCache[bytes, np.ndarray] = LRUCache(
            maxsize=max(1, memory_bytes // (dimension * 4))
        )
        # Texts in flight: the docs (with their tracker) waiting for the same vector.
        self._waiting: dict[bytes, list[tuple[Doc, T]]] = {}

    @property
    def cache(self) -> VectorCache | None:
        return self._cache

    async def split(self, docs: Sequence[Doc], tracker: T) -> Split[T]:
        out: Split[T] = Split()
        unknown: list[Doc] = []
        for doc in docs:
            h = doc.text_hash
            if h in self._waiting:
                self._waiting[h].append((doc, tracker))
                out.from_run += 1
            elif (vector := self._recent.get(h)) is not None:
                out.reused.append((doc, tracker))
                out.vectors.append(vector)
                out.from_run += 1
            else:
                unknown.append(doc)
        cached: dict[bytes, np.ndarray] = {}
        if self._cache is not None and unknown:
            cached = await asyncio.to_thread(self._cache.lookup, [d.text_hash for d in unknown])
        for doc in unknown:
            h = doc.text_hash
            if (vector := cached.get(h)) is not None:
                out.reused.append((doc, tracker))
                out.vectors.append(vector)
                out.from_cache += 1
                self._recent[h] = vector
            elif h in self._waiting:  # a repeat within this claim
                self._waiting[h].append((doc, tracker))
                out.from_run += 1
            else:
                self._waiting[h] = []
                out.send.append(doc)
        return out

    def embedded(self, doc: Doc, vector: np.ndarray) -> list[tuple[Doc, T]]:
        """The docs that waited for this doc's text; remembers the vector."""
        self._recent[doc.text_hash] = vector
        return self._waiting.pop(doc.text_hash, [])

    def failed(self, doc: Doc) -> list[tuple[Doc, T]]:
        """The docs that waited for a text the fleet refused: they fail the same way."""
        return self._waiting.pop(doc.text_hash, [])

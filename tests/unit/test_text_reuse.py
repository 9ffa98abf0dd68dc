"""Each distinct text goes to the fleet once (worker/reuse.py), without servers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedder.worker.documents import Doc, to_doc
from embedder.worker.reuse import TextReuse
from embedder.worker.vector_cache import VectorCache

DIM = 4


def doc(doc_id: int, text: str) -> Doc:
    made = to_doc({"_id": doc_id, "text": text}, "text")
    assert isinstance(made, Doc)
    return made


def vector(value: float) -> np.ndarray:
    return np.full(DIM, value, np.float32)


async def test_only_the_first_doc_of_each_text_is_sent_and_the_rest_wait_for_it() -> None:
    reuse: TextReuse[str] = TextReuse(None, 1 << 20, DIM)
    a1, b, a2, a3 = doc(1, "a"), doc(2, "b"), doc(3, "a"), doc(4, "a")

    first = await reuse.split([a1, b, a2], "claim-1")
    later = await reuse.split([a3], "claim-2")

    assert first.send == [a1, b] and later.send == []
    assert (first.from_run, later.from_run) == (1, 1)
    assert reuse.embedded(a1, vector(1)) == [(a2, "claim-1"), (a3, "claim-2")]
    assert reuse.embedded(b, vector(2)) == []


async def test_a_text_embedded_earlier_in_the_run_is_reused_at_once() -> None:
    reuse: TextReuse[str] = TextReuse(None, 1 << 20, DIM)
    first = doc(1, "a")
    await reuse.split([first], "c1")
    reuse.embedded(first, vector(1))

    again = await reuse.split([doc(2, "a"), doc(3, "new")], "c2")

    assert [d.id for d in again.send] == [3]
    assert [(d.id, t) for d, t in again.reused] == [(2, "c2")]
    np.testing.assert_array_equal(again.vectors[0], vector(1))
    assert (again.from_run, again.from_cache) == (1, 0)


async def test_the_docs_waiting_on_a_refused_text_fail_with_it() -> None:
    reuse: TextReuse[str] = TextReuse(None, 1 << 20, DIM)
    sent, waiting = doc(1, "bad"), doc(2, "bad")
    await reuse.split([sent, waiting], "c")

    assert reuse.failed(sent) == [(waiting, "c")]
    # Refused texts are not remembered: the next doc with that text is sent again.
    assert (await reuse.split([doc(3, "bad")], "c")).send == [doc(3, "bad")]


async def test_memory_is_bounded_and_the_oldest_text_is_forgotten_first() -> None:
    reuse: TextReuse[str] = TextReuse(None, 2 * DIM * 4, DIM)  # room for two vectors
    for i, text in enumerate(["a", "b", "c"]):
        d = doc(i, text)
        await reuse.split([d], "c")
        reuse.embedded(d, vector(i))

    again = await reuse.split([doc(10, "a"), doc(11, "b"), doc(12, "c")], "c")

    assert [d.text for d in again.send] == ["a"]
    assert sorted(d.text for d, _ in again.reused) == ["b", "c"]


async def test_texts_of_earlier_runs_come_from_the_vector_cache(tmp_path: Path) -> None:
    cache = VectorCache(tmp_path / "cache.sqlite", embed_key="k", dimension=DIM, max_rows=10)
    cache.store([doc(0, "old").text_hash], vector(7)[None, :])
    reuse: TextReuse[str] = TextReuse(cache, 1 << 20, DIM)

    split = await reuse.split([doc(1, "old"), doc(2, "old"), doc(3, "new")], "c")

    assert [d.id for d in split.send] == [3]
    assert [d.id for d, _ in split.reused] == [1, 2]
    assert (split.from_cache, split.from_run) == (2, 0)
    for got in split.vectors:
        np.testing.assert_array_equal(got, vector(7))
    cache.close()

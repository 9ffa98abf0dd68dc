"""The vector cache on disk (worker/vector_cache.py), on a temporary directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedder.errors import ConfigurationError
from embedder.identity import text_hash
from embedder.worker.vector_cache import VectorCache

DIM = 8


def vectors(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)


def hashes(count: int, start: int = 0) -> list[bytes]:
    return [text_hash(f"text {i}") for i in range(start, start + count)]


def cache(path: Path, **extra: object) -> VectorCache:
    options: dict[str, object] = {"embed_key": "model-a", "dimension": DIM, "max_rows": 100}
    return VectorCache(path, **{**options, **extra})  # type: ignore[arg-type]


def test_stored_vectors_are_found_by_hash_after_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    first = cache(path)
    assert first.fresh
    first.store(hashes(3), vectors(3))
    first.close()

    again = cache(path)
    found = again.lookup([*hashes(3), text_hash("never stored")])

    assert not again.fresh and len(again) == 3
    assert set(found) == set(hashes(3))
    for h, expected in zip(hashes(3), vectors(3), strict=True):
        np.testing.assert_array_equal(found[h], expected)
    again.close()


def test_a_full_cache_forgets_its_oldest_vectors(tmp_path: Path) -> None:
    small = cache(tmp_path / "cache.sqlite", max_rows=5)
    small.store(hashes(4), vectors(4))
    small.store(hashes(4, start=4), vectors(4, seed=1))

    assert len(small) == 5
    assert set(small.lookup(hashes(8))) == set(hashes(5, start=3))
    small.close()


def test_a_cache_of_another_embed_key_is_started_again(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    old = cache(path)
    old.store(hashes(3), vectors(3))
    old.close()

    other = cache(path, embed_key="model-b")

    assert other.fresh and len(other) == 0
    other.close()


def test_a_damaged_file_is_started_again(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    path.write_bytes(b"not a database at all" * 100)

    fresh = cache(path)
    fresh.store(hashes(1), vectors(1))

    assert fresh.fresh and len(fresh) == 1
    fresh.close()


def test_another_probe_vector_under_the_same_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    probe = vectors(1)[0]
    cache(path, probe=probe).close()
    cache(path, probe=probe.astype(np.float16).astype(np.float32)).close()  # rounding: same

    with pytest.raises(ConfigurationError, match="--model-revision"):
        cache(path, probe=vectors(1, seed=9)[0])


async def test_stores_made_soon_are_all_written_by_aclose(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    writer = cache(path)
    for batch in range(10):
        await writer.store_soon(hashes(5, start=5 * batch), vectors(5, seed=batch))
    await writer.aclose()

    reader = cache(path)
    assert len(reader) == 50
    reader.close()

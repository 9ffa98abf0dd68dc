"""Reading an OpenAI-shaped embeddings answer, as an OpenAI client would: the tests' check of
what ``embedder serve`` sends on /v1/embeddings (embedder itself never reads this shape)."""

from __future__ import annotations

import base64

import numpy as np
import orjson


def decode_openai_response(raw: bytes, expected_count: int) -> np.ndarray:
    body = orjson.loads(raw)
    items = sorted(body["data"], key=lambda item: int(item["index"]))
    rows = [
        np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        if isinstance(item["embedding"], str)
        else np.asarray(item["embedding"], dtype=np.float32)
        for item in items
    ]
    assert len(rows) == expected_count, (len(rows), expected_count)
    return np.stack(rows).astype(np.float32)

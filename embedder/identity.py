"""What identifies a vector: the text it was made from and the model (with its options) that
made it.

A text's key is a 128-bit BLAKE2b of its UTF-8 bytes, exactly as sent: TEI's own processing of
a text (tokenisation, truncation) is a function of those bytes, so equal keys give equal
vectors. Two texts that differ only beyond the truncation point get different keys and are
embedded separately: never wrong, only not maximal.

The embed key names the model, every server setting and every option that changes its vectors;
vectors are reused only under the same embed key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import numpy as np

from embedder.fleet import tei_protocol as tei

TEXT_HASH_BYTES = 16
# The least cosine similarity between two answers for one text from "the same" model: float16
# on another GPU stays far above it; another model, pooling or set of weights falls below.
SAME_VECTOR_COSINE = 0.99


def text_hash(text: str) -> bytes:
    return hash_utf8(text.encode("utf-8"))


def hash_utf8(encoded: bytes) -> bytes:
    return hashlib.blake2b(encoded, digest_size=TEXT_HASH_BYTES).digest()


def embed_key(info: tei.Info, options: tei.EmbedOptions, dimension: int) -> str:
    """A short, stable name for everything that decides a text's vector: the model and every
    output-changing setting ``/info`` reports (``tei.ModelIdentity``: id, revision, dtype,
    pooling, input length, truncation), the request options and the dimension.

    ``info.model_sha`` is the fleet's revision: TEI's, or the user's ``--model-revision`` where
    TEI reports none (a local model directory). A change to any of these is a new key, so a
    vector cached or written under the old one is never handed out for the new one.
    """
    identity = asdict(info.identity)
    identity.update(
        {
            "normalize": options.normalize,
            # None leaves truncation to the server's --auto-truncate: part of the identity too.
            "truncate": options.truncate if options.truncate is not None else info.auto_truncate,
            "truncation_direction": options.truncation_direction,
            "dimensions": options.dimensions,
            "prompt_name": options.prompt_name,
            "dimension": dimension,
        }
    )
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def same_vector(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two answers for one text come from the same model and settings."""
    if a.shape != b.shape:
        return False
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return norms > 0 and float(np.dot(a, b)) / norms >= SAME_VECTOR_COSINE

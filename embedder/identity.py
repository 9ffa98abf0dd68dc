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

import numpy as np

from embedder.fleet.protocol import EmbedOptions, ServerInfo

TEXT_HASH_BYTES = 16
# The least cosine similarity between two answers for one text from "the same" model: float16
# on another GPU stays far above it; another model, pooling or set of weights falls below.
SAME_VECTOR_COSINE = 0.99


def text_hash(text: str) -> bytes:
    return hash_utf8(text.encode("utf-8"))


def hash_utf8(encoded: bytes) -> bytes:
    return hashlib.blake2b(encoded, digest_size=TEXT_HASH_BYTES).digest()


def embed_key(info: ServerInfo, options: EmbedOptions, dimension: int) -> str:
    """A short, stable name for everything that decides a text's vector, computed the same way
    for every kind of server (TEI, vLLM, Infinity, an OpenAI-compatible API), so the vector
    cache and the lineage mean the same whichever served the model: the model (its id and
    revision: ``protocol.ModelIdentity``), what an over-long input gets (cut or refused), the
    request options and the dimension.

    ``info.model_sha`` is the fleet's revision: TEI's, or the user's ``--model-revision`` where
    the server reports none. Fields only some kinds report (TEI's dtype and pooling, the input
    length) are checked between endpoints at start and left out here, so that one model keeps
    one key across servers. A change to any field here is a new key, so a vector cached or
    written under the old one is never handed out for the new one.
    """
    identity = {
        "model_id": info.model_id,
        "model_sha": info.model_sha,
        "normalize": options.normalize,
        # None leaves truncation to the server's default: what that default is, is the key.
        "truncate": info.truncates(options),
        "truncation_direction": options.truncation_direction,
        "dimensions": options.dimensions,
        "prompt_name": options.prompt_name,
        "dimension": dimension,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def same_vector(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two answers for one text come from the same model and settings."""
    if a.shape != b.shape:
        return False
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return norms > 0 and float(np.dot(a, b)) / norms >= SAME_VECTOR_COSINE

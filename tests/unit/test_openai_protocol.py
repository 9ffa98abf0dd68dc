"""The OpenAI embeddings API as each server defines it, read against our protocol module.

The bodies below are the servers' own shapes, from their sources:
vllm-project/vllm vllm/entrypoints/openai/protocol.py (``ModelCard``, ``ErrorResponse``) and
vllm/entrypoints/pooling/base/protocol.py (``truncate_prompt_tokens``, ``embed_dtype``,
``endianness``, ``dimensions``); michaelfeil/infinity
libs/infinity_emb/infinity_emb/fastapi_schemas/pymodels.py (``ModelInfo``,
``OpenAIEmbeddingResult``) and errors.py (``OpenAIException.json``); FastAPI's request
validation body (Infinity's 422 over ``INFINITY_MAX_CLIENT_BATCH_SIZE``, pydantic's wording);
huggingface/text-embeddings-inference router/src/http/types.rs (``OpenAICompatErrorResponse``).
"""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest

from embedder.fleet import openai_protocol as openai
from embedder.fleet import tei_protocol as tei
from embedder.fleet.endpoint import address, retry_after
from embedder.fleet.protocol import EmbedOptions, ServerInfo, ServerKind, WireApi, refusals
from embedder.identity import embed_key

VLLM_MODELS = {
    "object": "list",
    "data": [
        {
            "id": "gemma",
            "object": "model",
            "created": 1,
            "owned_by": "vllm",
            "root": "google/embeddinggemma-300m",
            "parent": None,
            "max_model_len": 2048,
            "permission": [],
        }
    ],
}
INFINITY_MODELS = {
    "object": "list",
    "data": [
        {
            "id": "BAAI/bge-small-en-v1.5",
            "stats": {"queue_fraction": 0.0, "batch_size": 32},
            "object": "model",
            "owned_by": "infinity",
            "created": 1,
            "backend": "torch",
            "capabilities": ["embed"],
        }
    ],
}


def test_model_cards_name_the_kind_the_model_and_its_limits() -> None:
    vllm = openai.server_info(VLLM_MODELS, requested=None, version="0.10.1")
    assert (vllm.kind, vllm.model_id, vllm.served_model_name) == (
        ServerKind.VLLM,
        "google/embeddinggemma-300m",  # root: the model loaded; id is only its served name
        "gemma",
    )
    assert vllm.max_input_length == 2048 and not vllm.auto_truncate
    assert vllm.max_concurrent_requests is None  # no admission control
    infinity = openai.server_info(INFINITY_MODELS, requested=None)
    assert (infinity.kind, infinity.model_id, infinity.auto_truncate) == (
        ServerKind.INFINITY,
        "BAAI/bge-small-en-v1.5",
        True,
    )
    hosted = {"data": [{"id": "text-embedding-3-small", "owned_by": "system"}, {"id": "gpt-4o"}]}
    with pytest.raises(tei.ProtocolError, match="--openai-model"):
        openai.server_info(hosted, requested=None)
    chosen = openai.server_info(hosted, requested="text-embedding-3-small")
    assert chosen.kind is ServerKind.OPENAI and chosen.model_id == "text-embedding-3-small"


@pytest.mark.parametrize(
    ("status", "body", "error_type", "message"),
    [
        # vLLM 0.6-0.10: flat ErrorResponse
        (
            400,
            {
                "object": "error",
                "message": "This model's maximum context length is 512 tokens. However, you "
                "requested 700 tokens in the input for embedding generation.",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            },
            "BadRequestError",
            "maximum context length is 512",
        ),
        # vLLM since 0.11 and Infinity: {"error": {...}}
        (
            429,
            {
                "error": {
                    "message": "model m is currently overloaded",
                    "type": None,
                    "param": None,
                    "code": 429,
                }
            },
            None,
            "overloaded",
        ),
        # TEI's OpenAI route
        (
            429,
            {"message": "Model is overloaded", "code": 429, "type": "Overloaded"},
            "Overloaded",
            "overloaded",
        ),
        # FastAPI request validation (Infinity's batch limit)
        (
            422,
            {
                "detail": [
                    {
                        "type": "too_long",
                        "msg": "List should have at most 2048 items after validation, not 3000",
                    }
                ]
            },
            "RequestValidationError",
            "at most 2048 items",
        ),
    ],
)
def test_error_bodies_of_every_server_are_read(
    status: int, body: dict[str, object], error_type: str | None, message: str
) -> None:
    answer = openai.decode_error(status, orjson.dumps(body))
    assert answer.status == status and answer.error_type == error_type
    assert message in answer.message


def test_batch_limits_are_learnt_from_tei_and_infinity_wordings() -> None:
    assert openai.parse_batch_limit(tei.batch_size_message(64, 32)) == 32
    assert openai.parse_batch_limit("List should have at most 2048 items after validation") == 2048
    assert openai.parse_batch_limit("Model is overloaded") is None


def test_requests_put_options_in_each_kinds_own_fields() -> None:
    options = EmbedOptions(truncate=True, dimensions=256)
    vllm = orjson.loads(openai.encode_request(["a"], options, model="m", kind=ServerKind.VLLM))
    assert vllm == {
        "input": ["a"],
        "encoding_format": "base64",
        "model": "m",
        "dimensions": 256,
        "embed_dtype": "float32",
        "endianness": "little",
        "truncate_prompt_tokens": -1,
    }
    infinity = orjson.loads(
        openai.encode_request(["a"], options, model="m", kind=ServerKind.INFINITY)
    )
    assert infinity == {
        "input": ["a"],
        "encoding_format": "base64",
        "model": "m",
        "dimensions": 256,
    }


def test_options_a_kind_cannot_honour_are_refused() -> None:
    vllm = ServerInfo(kind=ServerKind.VLLM, model_id="m")
    assert refusals(vllm, WireApi.OPENAI, EmbedOptions(truncate=True)) == []
    assert refusals(vllm, WireApi.OPENAI, EmbedOptions(normalize=False))
    assert refusals(vllm, WireApi.OPENAI, EmbedOptions(prompt_name="query"))
    infinity = ServerInfo(kind=ServerKind.INFINITY, model_id="m", auto_truncate=True)
    assert refusals(infinity, WireApi.OPENAI, EmbedOptions(truncate=False))
    tei_info = ServerInfo(kind=ServerKind.TEI, model_id="m", auto_truncate=True)
    everything = EmbedOptions(False, False, "Left", 8, "query")
    assert refusals(tei_info, WireApi.TEI, everything) == []
    assert len(refusals(tei_info, WireApi.OPENAI, everything)) == 4


def test_base64_answers_decode_in_index_order_and_garbage_is_refused() -> None:
    vectors = np.random.default_rng(1).standard_normal((3, 768)).astype(np.float32)
    raw = openai.encode_response(vectors, model="m", encoding_format="base64", prompt_tokens=9)
    decoded, tokens = openai.decode_response(raw, 3)
    np.testing.assert_array_equal(decoded, vectors)
    assert tokens == 9
    body = orjson.loads(raw)
    body["data"].reverse()
    np.testing.assert_array_equal(openai.decode_response(orjson.dumps(body), 3)[0], vectors)
    odd = np.ones((2, 5), np.float32)  # 20 bytes a row: padded base64
    raw = openai.encode_response(odd, model="m", encoding_format="base64", prompt_tokens=1)
    np.testing.assert_array_equal(openai.decode_response(raw, 2)[0], odd)
    floats = openai.encode_response(vectors, model="m", encoding_format="float", prompt_tokens=1)
    nan = base64.b64encode(np.full(4, np.nan, np.float32).tobytes()).decode()
    for bad, why in [
        (raw, "3 inputs"),
        (floats, "float lists"),
        (orjson.dumps({"data": [{"embedding": nan, "index": 0}]}), "NaN"),
        (orjson.dumps({"data": [{"embedding": "@@@@", "index": 0}]}), "base64"),
        (orjson.dumps({"data": [{"embedding": "AAAA", "index": 0}]}), "float32 rows"),
        (b"<html>", "not an embeddings list"),
    ]:
        with pytest.raises(tei.ProtocolError, match=why):
            openai.decode_response(bad, 3 if bad in (raw, floats) else 1)


def test_urls_name_the_api_by_scheme_and_keep_an_openai_base() -> None:
    assert address("http://h:1/embed").api is None
    assert address("tei+http://h:1/embed").url == "http://h:1"
    where = address("openai+https://key:@api.example.com/v1/embeddings")
    assert (where.api, where.url) == (WireApi.OPENAI, "https://api.example.com/v1")
    assert retry_after("3") == 3.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after("soon") is None


def test_the_embed_key_is_the_same_for_one_model_on_any_kind() -> None:
    options = EmbedOptions(truncate=True)
    on_tei = ServerInfo(
        kind=ServerKind.TEI, model_id="m", model_sha="r", model_dtype="float16", auto_truncate=True
    )
    on_vllm = ServerInfo(kind=ServerKind.VLLM, model_id="m", model_sha="r", max_input_length=512)
    assert embed_key(on_tei, options, 768) == embed_key(on_vllm, options, 768)
    # what an over-long input gets is part of the key: the server's default decides it
    assert embed_key(on_tei, EmbedOptions(), 768) != embed_key(on_vllm, EmbedOptions(), 768)
    assert on_tei.identity.differences(on_vllm.identity) == []
    other = ServerInfo(kind=ServerKind.VLLM, model_id="m", model_sha="r2")
    assert on_tei.identity.differences(other.identity) == ["model_sha: 'r' -> 'r2'"]

"""The OpenAI embeddings API as vLLM, Infinity, TEI and hosted services speak it, written once.

Sources, each server's own definition:

* TEI: ``OpenAICompatRequest``/``OpenAICompatResponse``/``OpenAICompatErrorResponse`` in
  huggingface/text-embeddings-inference router/src/http/types.rs; ``openai_embed`` in
  router/src/http/server.rs (routes ``/v1/embeddings`` and ``/embeddings``; it truncates as
  ``--auto-truncate`` says and always normalises). Errors ``{"message", "code", "type"}``.
* vLLM: ``EmbeddingCompletionRequest`` (``truncate_prompt_tokens``, ``dimensions``,
  ``encoding_format`` float/base64/bytes, ``embed_dtype``, ``endianness``) in
  vllm-project/vllm vllm/entrypoints/pooling/base/protocol.py; ``ModelCard`` (``id``, ``root``,
  ``max_model_len``, ``owned_by: "vllm"``) and ``ErrorResponse`` (``{"object": "error",
  "message", "type", "param", "code"}``, newer ``{"error": {...}}``) in
  vllm/entrypoints/openai/protocol.py. A too-long input is a 400 ``BadRequestError``. No
  admission control: it queues everything.
* Infinity: ``MultiModalOpenAIEmbedding``/``OpenAIEmbeddingResult`` and ``ModelInfo``
  (``owned_by: "infinity"``, ``stats.batch_size``) in michaelfeil/infinity
  libs/infinity_emb/infinity_emb/fastapi_schemas/pymodels.py; routes ``{url_prefix}/embeddings``
  and ``{url_prefix}/models`` (prefix empty by default) in infinity_server.py; errors
  ``{"error": {"message", "type", "param", "code"}}`` (errors.py): 429 "model ... is currently
  overloaded" (no Retry-After), 400 for a bad model or ``dimensions``; more inputs than
  ``INFINITY_MAX_CLIENT_BATCH_SIZE`` (2048) is FastAPI's 422 ``{"detail": [...]}`` "List should
  have at most N items". It always truncates to the model's length and normalises.

base64 is the vectors' raw little-endian float32 bytes: decoding it is a memory copy, where
JSON floats cost a parse per number.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pybase64

from embedder.fleet import tei_protocol as tei
from embedder.fleet.protocol import EmbedOptions, ServerInfo, ServerKind, WireApi

EMBEDDINGS_ROUTES = ("/v1/embeddings", "/embeddings")  # TEI answers both


# --- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenAIRequest:
    inputs: list[str]
    encoding_format: str
    dimensions: int | None
    model: str | None


def encode_request(
    texts: Sequence[str], options: EmbedOptions, *, model: str | None, kind: ServerKind
) -> bytes:
    """A request for base64 vectors, with ``options`` in ``kind``'s own fields; options the
    kind cannot take were refused at start (``protocol.refusals``)."""
    body: dict[str, Any] = {"input": list(texts), "encoding_format": "base64"}
    if model is not None:
        body["model"] = model
    if options.dimensions is not None:
        body["dimensions"] = options.dimensions
    if kind is ServerKind.VLLM:
        # Native byte order by default: little-endian asked for, so the decoding never depends
        # on the server's host.
        body["embed_dtype"] = "float32"
        body["endianness"] = "little"
        if options.truncate:
            body["truncate_prompt_tokens"] = -1  # cut at the model's length
    return orjson.dumps(body)


def decode_request(raw: bytes) -> OpenAIRequest:
    """The server side (``embedder serve``), as TEI reads it."""
    body = tei.load_object(raw)
    texts = tei.texts_of(body, "input")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise tei.ProtocolError("`encoding_format` must be `float` or `base64`")
    dimensions = body.get("dimensions")
    model = body.get("model")
    return OpenAIRequest(
        texts,
        encoding,
        None if dimensions is None else int(dimensions),
        None if model is None else str(model),
    )


# --- answers ----------------------------------------------------------------------------------


def encode_response(
    vectors: np.ndarray, *, model: str, encoding_format: str, prompt_tokens: int
) -> bytes:
    rows = np.ascontiguousarray(vectors, dtype="<f4")
    if encoding_format == "base64":
        embeddings: list[Any] = [pybase64.b64encode(row.tobytes()).decode("ascii") for row in rows]
    else:
        embeddings = list(rows)
    body = {
        "object": "list",
        "data": [
            {"object": "embedding", "embedding": e, "index": i} for i, e in enumerate(embeddings)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def decode_response(raw: bytes, expected_count: int) -> tuple[np.ndarray, int | None]:
    """The vectors of a base64 answer, in input order, and ``usage.prompt_tokens``.

    Garbage never leaves: a wrong count, missing or repeated indices, float lists where base64
    was asked for, rows of different sizes, NaN/inf all raise :class:`tei.ProtocolError`.
    """
    try:
        body = orjson.loads(raw)
        data = body["data"]
        strings = [item["embedding"] for item in data]
        indices = [item["index"] for item in data]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise tei.ProtocolError(f"answer is not an embeddings list ({len(raw)} bytes)") from exc
    if len(strings) != expected_count:
        raise tei.ProtocolError(f"answer has {len(strings)} vectors for {expected_count} inputs")
    if indices != list(range(expected_count)):
        if sorted(indices) != list(range(expected_count)):
            raise tei.ProtocolError("answer's indices are not one per input")
        strings = [s for _, s in sorted(zip(indices, strings, strict=True))]
    if not all(isinstance(s, str) for s in strings):
        raise tei.ProtocolError("answer holds float lists, not the base64 asked for")
    width = len(strings[0]) if strings else 0
    if any(len(s) != width for s in strings):
        raise tei.ProtocolError("vectors are ragged")
    try:
        # Unpadded rows (a dimension divisible by 3) decode as one string: one call, one copy.
        # pybase64's SIMD decoder is ~70x the standard library's (0.03 against 2 ms for 128
        # rows of 768 floats), which would otherwise be the worker's largest cost.
        if width % 4 == 0 and not (strings and strings[0].endswith("=")):
            flat = pybase64.b64decode("".join(strings), validate=True)
        else:
            flat = b"".join(pybase64.b64decode(s, validate=True) for s in strings)
    except (binascii.Error, ValueError) as exc:
        raise tei.ProtocolError(f"vectors are not base64: {exc}") from exc
    if expected_count and (len(flat) % (4 * expected_count) or not flat):
        raise tei.ProtocolError("vectors are not whole float32 rows")
    vectors = np.frombuffer(flat, dtype="<f4").reshape(expected_count, -1)
    tokens = _prompt_tokens(body)
    return tei.checked(vectors.astype(np.float32, copy=False), expected_count), tokens


def _prompt_tokens(body: Mapping[str, Any]) -> int | None:
    usage = body.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None


# --- model listings ---------------------------------------------------------------------------


def server_info(
    listing: Mapping[str, Any], *, requested: str | None, version: str = ""
) -> ServerInfo:
    """A server's model card, from its ``/v1/models`` (vLLM, hosted) or ``/models`` (Infinity)
    answer: the card of ``requested``, or the only one listed.

    Reported: vLLM's ``root`` (the model it loaded; ``id`` is only the served name) and
    ``max_model_len``; Infinity's ``id`` and ``stats.batch_size``. Neither reports a revision:
    ``--model-revision`` names it. Which kind it is, is read from ``owned_by``.
    """
    try:
        cards = [c for c in listing["data"] if isinstance(c, dict) and "id" in c]
    except (KeyError, TypeError) as exc:
        raise tei.ProtocolError("model listing has no `data` list") from exc
    chosen = [c for c in cards if c["id"] == requested] if requested else cards
    if len(chosen) != 1:
        names = ", ".join(sorted(str(c["id"]) for c in cards)) or "none"
        wanted = f"model {requested!r}" if requested else "exactly one model"
        raise tei.ProtocolError(f"the server lists {names}; expected {wanted} (--openai-model)")
    card = chosen[0]
    owner = str(card.get("owned_by", ""))
    kind = {"vllm": ServerKind.VLLM, "infinity": ServerKind.INFINITY}.get(owner, ServerKind.OPENAI)
    served = str(card["id"])
    if kind is ServerKind.VLLM:
        length = card.get("max_model_len")
        return ServerInfo(
            kind=kind,
            model_id=str(card.get("root") or served),
            served_model_name=served,
            max_input_length=length if isinstance(length, int) else None,
            auto_truncate=False,  # vLLM refuses a too-long input unless asked to cut it
            version=version,
        )
    if kind is ServerKind.INFINITY:
        return ServerInfo(
            kind=kind,
            model_id=served,
            served_model_name=served,
            auto_truncate=True,
            # 2048 unless INFINITY_MAX_CLIENT_BATCH_SIZE says otherwise: learnt from its 422.
            max_client_batch_size=None,
            version=version,
        )
    return ServerInfo(kind=kind, model_id=served, served_model_name=served, version=version)


# --- errors -----------------------------------------------------------------------------------


def encode_error(error_type: tei.ErrorType, message: str) -> bytes:
    """TEI's OpenAI-route error: ``{"message", "code", "type"}``."""
    return orjson.dumps({"message": message, "code": error_type.status, "type": str(error_type)})


def encode_nested_error(message: str, *, error_type: str | None, code: int) -> bytes:
    """vLLM's (newer) and Infinity's error body: ``{"error": {message, type, param, code}}``."""
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    )


def decode_error(status: int, raw: bytes, content_type: str | None = None) -> tei.ErrorAnswer:
    """Any of the error shapes above, TEI's ``{"error", "error_type"}`` and FastAPI's
    ``{"detail": ...}`` included; a body in none of them is kept as text."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and "message" in inner:
            kind = inner.get("type")
            return tei.ErrorAnswer(
                status, None if kind is None else str(kind), str(inner["message"])
            )
        if "detail" in body:
            detail = body["detail"]
            if isinstance(detail, list):
                messages = [str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail]
                return tei.ErrorAnswer(status, "RequestValidationError", "; ".join(messages))
            return tei.ErrorAnswer(status, None, str(detail))
    return tei.decode_error(status, raw, content_type)


_ITEMS_LIMIT = re.compile(r"at most (\d+) items")


def parse_batch_limit(message: str) -> int | None:
    """The most inputs a request may hold, when an error says a batch exceeded it (TEI's
    wording, or pydantic's list limit as Infinity answers it)."""
    limit = tei.parse_batch_limit(message)
    if limit is not None:
        return limit
    match = _ITEMS_LIMIT.search(message)
    return int(match.group(1)) if match else None


# --- the wire ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenAIWire:
    """The OpenAI embeddings route of one endpoint, with base64 vectors."""

    route: str
    model: str | None
    kind: ServerKind
    api: WireApi = WireApi.OPENAI

    def encode(self, texts: Sequence[str], options: EmbedOptions) -> bytes:
        return encode_request(texts, options, model=self.model, kind=self.kind)

    def decode(self, raw: bytes, expected_count: int) -> tuple[np.ndarray, int | None]:
        return decode_response(raw, expected_count)

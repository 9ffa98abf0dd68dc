"""TEI's HTTP contract, written once.

Request and response shapes, the error JSON with its capitalised ``error_type`` and status
codes, and ``/info``. The client, ``embedder serve`` and the servers in ``tests/`` and
``bench/`` all build and read messages through this module, so a change to the contract is
one change. Facts from TEI 1.9 (see the project's TEI notes).
"""

from __future__ import annotations

import enum
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import orjson
import simdjson

from embedder.fleet.protocol import EmbedOptions, ServerInfo, ServerKind, WireApi
from embedder.vectors import vector_faults

EMBED_ROUTE = "/embed"
TOKENIZE_ROUTE = "/tokenize"
DEFAULT_PAYLOAD_LIMIT = 2_000_000

# Timing headers on successful answers, all in milliseconds.
HEADER_COMPUTE_TOKENS = "x-compute-tokens"
HEADER_COMPUTE_TIME = "x-compute-time"
HEADER_QUEUE_TIME = "x-queue-time"
HEADER_INFERENCE_TIME = "x-inference-time"
HEADER_TOKENIZATION_TIME = "x-tokenization-time"
HEADER_TOTAL_TIME = "x-total-time"
HEADER_COMPUTE_CHARACTERS = "x-compute-characters"


class ErrorType(enum.StrEnum):
    VALIDATION = "Validation"
    TOKENIZER = "Tokenizer"
    EMPTY = "Empty"
    OVERLOADED = "Overloaded"
    BACKEND = "Backend"
    UNHEALTHY = "Unhealthy"

    @property
    def status(self) -> int:
        return _STATUS[self]


_STATUS = {
    ErrorType.VALIDATION: 422,
    ErrorType.TOKENIZER: 422,
    ErrorType.EMPTY: 400,
    ErrorType.OVERLOADED: 429,
    ErrorType.BACKEND: 424,
    ErrorType.UNHEALTHY: 503,
}


class ProtocolError(ValueError):
    """A message does not have the shape TEI gives it."""


@dataclass(frozen=True, slots=True)
class Info:
    """The fields of ``GET /info`` that clients act on (others are kept in ``extra``)."""

    model_id: str
    model_sha: str | None
    model_dtype: str
    model_type: dict[str, Any]
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    served_model_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Info:
        try:
            return cls(
                model_id=str(body["model_id"]),
                model_sha=_opt_str(body.get("model_sha")),
                model_dtype=str(body.get("model_dtype", "")),
                model_type=dict(body.get("model_type") or {}),
                max_concurrent_requests=int(body["max_concurrent_requests"]),
                max_input_length=int(body["max_input_length"]),
                max_batch_tokens=int(body["max_batch_tokens"]),
                max_batch_requests=_opt_int(body.get("max_batch_requests")),
                max_client_batch_size=int(body["max_client_batch_size"]),
                auto_truncate=bool(body.get("auto_truncate", False)),
                tokenization_workers=int(body.get("tokenization_workers") or 1),
                version=str(body.get("version", "")),
                served_model_name=_opt_str(body.get("served_model_name")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"/info answer lacks a required field: {exc}") from exc

    def server_info(self) -> ServerInfo:
        """The fleet's view of this TEI server: every field of ``/info`` that changes a vector
        (TEI's ``Info`` struct, router/src/lib.rs) or limits a request.

        Out: tokenization workers, the ``version``, ``sha`` and ``docker_label`` of the build:
        none changes a vector. TEI's ``--default-prompt`` does change vectors but is not
        reported: name it in the model revision (``--model-revision``) when used.
        """
        return ServerInfo(
            kind=ServerKind.TEI,
            model_id=self.model_id,
            model_sha=self.model_sha,
            served_model_name=self.served_model_name,
            model_dtype=self.model_dtype,
            model_type=orjson.dumps(self.model_type, option=orjson.OPT_SORT_KEYS).decode(),
            max_input_length=self.max_input_length,
            auto_truncate=self.auto_truncate,
            max_client_batch_size=self.max_client_batch_size,
            max_batch_tokens=self.max_batch_tokens,
            max_concurrent_requests=self.max_concurrent_requests,
            version=self.version,
        )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


# --- /embed -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    inputs: list[str]
    options: EmbedOptions


def encode_embed_request(texts: Sequence[str], options: EmbedOptions) -> bytes:
    body: dict[str, Any] = {"inputs": list(texts), "normalize": options.normalize}
    if options.truncate is not None:
        body["truncate"] = options.truncate
        body["truncation_direction"] = options.truncation_direction
    if options.dimensions is not None:
        body["dimensions"] = options.dimensions
    if options.prompt_name is not None:
        body["prompt_name"] = options.prompt_name
    return orjson.dumps(body)


def decode_embed_request(raw: bytes) -> EmbedRequest:
    body = load_object(raw)
    texts = texts_of(body, "inputs")
    direction = body.get("truncation_direction", "Right")
    if direction not in ("Right", "Left"):
        raise ProtocolError("`truncation_direction` must be `Right` or `Left`")
    options = EmbedOptions(
        normalize=bool(body.get("normalize", True)),
        truncate=None if body.get("truncate") is None else bool(body["truncate"]),
        truncation_direction=direction,
        dimensions=_opt_int(body.get("dimensions")),
        prompt_name=_opt_str(body.get("prompt_name")),
    )
    return EmbedRequest(texts, options)


def encode_embed_response(vectors: np.ndarray) -> bytes:
    return orjson.dumps(
        np.ascontiguousarray(vectors, dtype=np.float32), option=orjson.OPT_SERIALIZE_NUMPY
    )


def decode_embed_response(raw: bytes, expected_count: int) -> np.ndarray:
    """The vectors of an ``/embed`` answer as a ``(n, dim)`` float32 array, checked.

    Garbage never leaves this function: a wrong count, ragged or empty vectors, non-numbers
    and NaN/inf all raise :class:`ProtocolError` with the reason. simdjson copies the numbers
    straight into one buffer (no Python float per value): decoding is most of a worker's CPU.
    """
    parser = _parser()
    try:
        body = parser.parse(raw)
    except ValueError as exc:  # simdjson's parse errors, NaN tokens and truncation included
        raise ProtocolError(f"answer is not JSON ({len(raw)} bytes): {exc}") from exc
    try:
        if not isinstance(body, simdjson.Array):
            raise ProtocolError("answer is not a list of vectors")
        if len(body) != expected_count:
            raise ProtocolError(f"answer has {len(body)} vectors for {expected_count} inputs")
        widths = {len(row) if isinstance(row, simdjson.Array) else -1 for row in body}
        if len(widths) > 1 or -1 in widths:
            raise ProtocolError("vectors are ragged or not lists")
        if expected_count and widths != {0} and not isinstance(body[0][0], int | float):
            raise ProtocolError("vectors hold non-numbers")  # nested lists, say
        try:
            flat = np.frombuffer(body.as_buffer(of_type="d"), dtype=np.float64)
        except (ValueError, TypeError) as exc:
            raise ProtocolError("vectors hold non-numbers") from exc
        if flat.size != expected_count * widths.pop():
            raise ProtocolError("vectors are nested or ragged")
        vectors = (
            flat.astype(np.float32).reshape(expected_count, -1)
            if expected_count
            else flat.reshape(0, 0)
        )
    finally:
        del body  # the parser reuses its buffers for the next document
    return checked(vectors, expected_count)


_local = threading.local()


def _parser() -> simdjson.Parser:
    """One parser per thread: a parser holds one document at a time."""
    parser: simdjson.Parser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    return parser


def checked(vectors: np.ndarray, expected_count: int) -> np.ndarray:
    if vectors.ndim != 2 or vectors.shape[0] != expected_count or vectors.shape[1] == 0:
        raise ProtocolError(f"vectors have shape {vectors.shape}, expected ({expected_count}, d)")
    if vector_faults(vectors, normalized=False).nonfinite_rows:
        raise ProtocolError("vectors hold NaN or infinity")
    return vectors


# --- /tokenize --------------------------------------------------------------------------------


def decode_tokenize_request(raw: bytes) -> tuple[list[str], bool]:
    body = load_object(raw)
    return texts_of(body, "inputs"), bool(body.get("add_special_tokens", True))


# --- errors -----------------------------------------------------------------------------------


def encode_error(error_type: ErrorType, message: str) -> bytes:
    return orjson.dumps({"error": message, "error_type": str(error_type)})


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    status: int
    error_type: str | None
    message: str


def decode_error(status: int, raw: bytes, content_type: str | None = None) -> ErrorAnswer:
    """Read a TEI error answer; plain-text bodies (413 from the HTTP layer) are kept as text,
    a web page (a proxy's or another server's) is named in a few words, never shown."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        if is_web_page(raw, content_type):
            page = (content_type or "text/html").split(";")[0].strip()
            return ErrorAnswer(status, None, f"HTTP {status} with a {page} page, not a TEI answer")
        return ErrorAnswer(status, None, raw[:300].decode("utf-8", "replace").strip())
    if isinstance(body, dict):
        message = body.get("error", body.get("message"))
        kind = body.get("error_type", body.get("type"))
        if message is not None:
            return ErrorAnswer(status, None if kind is None else str(kind), str(message))
    return ErrorAnswer(status, None, raw[:300].decode("utf-8", "replace"))


def is_web_page(raw: bytes, content_type: str | None) -> bool:
    """Whether an answer is an HTML (or XML) page: what a server that is not TEI sends."""
    kind = (content_type or "").lower()
    start = raw[:200].lstrip().lower()
    return "html" in kind or "xml" in kind or start.startswith((b"<!doctype", b"<html", b"<?xml"))


_BATCH_LIMIT = re.compile(r"batch size (\d+) > maximum allowed batch size (\d+)")


def batch_size_message(size: int, limit: int) -> str:
    return f"batch size {size} > maximum allowed batch size {limit}"


def parse_batch_limit(message: str) -> int | None:
    """The server's client-batch limit, when an error says a batch exceeded it."""
    match = _BATCH_LIMIT.search(message)
    return int(match.group(2)) if match else None


def texts_of(body: Mapping[str, Any], name: str) -> list[str]:
    """TEI takes one text or a list of texts under ``name``."""
    value = body.get(name)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return list(value)
    raise ProtocolError(f"`{name}` must be a string or a list of strings")


def load_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ProtocolError("request body must be a JSON object")
    return body


@dataclass(frozen=True, slots=True)
class TeiWire:
    """TEI's ``/embed``, with JSON floats (``protocol.EmbedWire``)."""

    route: str = EMBED_ROUTE
    api: WireApi = WireApi.TEI

    def encode(self, texts: Sequence[str], options: EmbedOptions) -> bytes:
        return encode_embed_request(texts, options)

    def decode(self, raw: bytes, expected_count: int) -> tuple[np.ndarray, int | None]:
        return decode_embed_response(raw, expected_count), None

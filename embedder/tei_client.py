"""HTTP to one TEI endpoint; every failure comes out as an :class:`EndpointError`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
import orjson

from embedder import tei_protocol as tei
from embedder.errors import (
    BatchTooLargeError,
    ConfigurationError,
    EndpointError,
    InputRejectedError,
)


def base_url(url: str) -> str:
    """``http://host:18080/embed`` and ``http://host:18080`` both name the server root."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"endpoint URL {url!r} is not an http(s) URL")
    path = parts.path.rstrip("/")
    if path.endswith(tei.EMBED_ROUTE):
        path = path[: -len(tei.EMBED_ROUTE)]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


@dataclass(frozen=True, slots=True)
class Embedded:
    vectors: np.ndarray
    tokens: int | None  # from x-compute-tokens, when the server sends it
    seconds: float


class EndpointClient:
    def __init__(self, url: str, http: httpx.AsyncClient, *, api_key: str | None = None) -> None:
        self.url = base_url(url)
        self._http = http
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"

    def __repr__(self) -> str:
        return f"EndpointClient({self.url})"

    async def info(self) -> tei.Info:
        response = await self._request("GET", "/info", kind_on_timeout="timeout")
        if response.status_code != 200:
            raise self._error(response)
        try:
            return tei.Info.from_json(response.json())
        except (ValueError, tei.ProtocolError) as exc:
            raise EndpointError(
                f"/info answer is unusable: {exc}", endpoint=self.url, kind="garbage"
            ) from exc

    async def healthy(self) -> bool:
        try:
            response = await self._http.get(self.url + "/health", timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def embed(self, texts: list[str], options: tei.EmbedOptions) -> Embedded:
        body = tei.encode_embed_request(texts, options)
        started = time.perf_counter()
        response = await self._request(
            "POST", tei.EMBED_ROUTE, content=body, kind_on_timeout="timeout"
        )
        if response.status_code != 200:
            raise self._error(response)
        try:
            vectors = tei.decode_embed_response(response.content, len(texts))
        except tei.ProtocolError as exc:
            raise EndpointError(f"bad answer: {exc}", endpoint=self.url, kind="garbage") from exc
        tokens = response.headers.get(tei.HEADER_COMPUTE_TOKENS)
        return Embedded(
            vectors,
            int(tokens) if tokens and tokens.isdigit() else None,
            time.perf_counter() - started,
        )

    async def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens per input, from /tokenize (special tokens included, as the model sees them)."""
        body = orjson.dumps({"inputs": texts, "add_special_tokens": True})
        response = await self._request(
            "POST", tei.TOKENIZE_ROUTE, content=body, kind_on_timeout="timeout"
        )
        if response.status_code != 200:
            raise self._error(response)
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise EndpointError(
                f"bad /tokenize answer: {exc}", endpoint=self.url, kind="garbage"
            ) from exc
        if not (isinstance(answer, list) and len(answer) == len(texts)):
            raise EndpointError(
                "bad /tokenize answer: not one token list per input",
                endpoint=self.url,
                kind="garbage",
            )
        return [len(tokens) if isinstance(tokens, list) else 0 for tokens in answer]

    async def _request(
        self, method: str, route: str, *, content: bytes | None = None, kind_on_timeout: str
    ) -> httpx.Response:
        try:
            return await self._http.request(
                method, self.url + route, content=content, headers=self._headers
            )
        except httpx.TimeoutException as exc:
            raise EndpointError(
                f"{route} timed out", endpoint=self.url, kind=kind_on_timeout
            ) from exc
        except httpx.HTTPError as exc:
            # Connection refused/reset, a truncated body, a protocol violation.
            message = f"{route} failed: {type(exc).__name__}: {exc}".rstrip(": ")
            raise EndpointError(message, endpoint=self.url, kind="connection") from exc

    def _error(self, response: httpx.Response) -> EndpointError:
        answer = tei.decode_error(response.status_code, response.content)
        status, message = answer.status, answer.message or f"HTTP {answer.status}"
        if status in (401, 403):
            raise ConfigurationError(
                f"{self.url} refused our credentials (HTTP {status}); check --tei-api-key"
            )
        if status == 413:
            return BatchTooLargeError(message, endpoint=self.url, status=status, limit=None)
        limit = tei.parse_batch_limit(message)
        if limit is not None:
            return BatchTooLargeError(message, endpoint=self.url, status=status, limit=limit)
        if status in (400, 422):
            return InputRejectedError(
                message,
                endpoint=self.url,
                kind="rejected",
                status=status,
                error_type=answer.error_type,
            )
        kind = {429: "overloaded", 503: "unhealthy", 424: "backend"}.get(status, "server_error")
        return EndpointError(
            message, endpoint=self.url, kind=kind, status=status, error_type=answer.error_type
        )

"""HTTP to one TEI endpoint; every failure comes out as an :class:`EndpointError`.

This is where an endpoint's URL enters the fleet, so it is also where credentials in it
(``http://user:token@host``) are taken out: they travel as HTTP basic auth, and the endpoint's
name, used in every log line, error and metric label, is the URL without them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
import numpy as np
import orjson

from embedder.errors import (
    BatchTooLargeError,
    ConfigurationError,
    EndpointError,
    FaultKind,
    InputRejectedError,
)
from embedder.fleet import tei_protocol as tei
from embedder.logs import redact


@dataclass(frozen=True, slots=True)
class Address:
    url: str  # the server root, without credentials: safe to show anywhere
    auth: httpx.BasicAuth | None  # the credentials the URL carried, if any


def address(url: str) -> Address:
    """``http://u:p@host:18080/embed`` and ``http://host:18080`` both name the server root."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"endpoint URL {redact(url)!r} is not an http(s) URL")
    path = parts.path.rstrip("/")
    if path.endswith(tei.EMBED_ROUTE):
        path = path[: -len(tei.EMBED_ROUTE)]
    host = parts.netloc.rpartition("@")[2]
    auth = None
    if parts.username is not None or parts.password is not None:
        auth = httpx.BasicAuth(unquote(parts.username or ""), unquote(parts.password or ""))
    return Address(urlunsplit((parts.scheme, host, path, "", "")), auth)


@dataclass(frozen=True, slots=True)
class EndpointReply:
    """One endpoint's answer to an embed request (the worker's ``Embedded`` is a doc once sent)."""

    vectors: np.ndarray
    tokens: int | None  # from x-compute-tokens, when the server sends it
    seconds: float


class EndpointClient:
    def __init__(self, url: str, http: httpx.AsyncClient, *, api_key: str | None = None) -> None:
        where = address(url)
        self.url = where.url
        self._auth = where.auth
        self._http = http
        self._headers = {"content-type": "application/json"}
        if api_key:  # TEI's --api-key; it takes the place of the URL's credentials
            self._headers["authorization"] = f"Bearer {api_key}"
            self._auth = None

    def __repr__(self) -> str:
        return f"EndpointClient({self.url})"

    async def info(self) -> tei.Info:
        response = await self._request("GET", "/info")
        if response.status_code != 200:
            raise self._error(response)
        try:
            return tei.Info.from_json(response.json())
        except (ValueError, tei.ProtocolError) as exc:
            content_type = response.headers.get("content-type")
            why = str(exc)
            if tei.is_web_page(response.content, content_type):
                why = f"a {content_type or 'web'} page, not a TEI answer"
            raise EndpointError(
                f"/info answer is unusable: {why}", endpoint=self.url, kind=FaultKind.GARBAGE
            ) from exc

    async def healthy(self) -> bool:
        try:
            response = await self._http.get(
                self.url + "/health", timeout=5.0, auth=self._auth or httpx.USE_CLIENT_DEFAULT
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def embed(self, texts: list[str], options: tei.EmbedOptions) -> EndpointReply:
        body = tei.encode_embed_request(texts, options)
        started = time.perf_counter()
        response = await self._request("POST", tei.EMBED_ROUTE, content=body)
        if response.status_code != 200:
            raise self._error(response)
        try:
            vectors = tei.decode_embed_response(response.content, len(texts))
        except tei.ProtocolError as exc:
            raise EndpointError(
                f"bad answer: {exc}", endpoint=self.url, kind=FaultKind.GARBAGE
            ) from exc
        tokens = response.headers.get(tei.HEADER_COMPUTE_TOKENS)
        return EndpointReply(
            vectors,
            int(tokens) if tokens and tokens.isdigit() else None,
            time.perf_counter() - started,
        )

    async def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens per input, from /tokenize (special tokens included, as the model sees them)."""
        body = orjson.dumps({"inputs": texts, "add_special_tokens": True})
        response = await self._request("POST", tei.TOKENIZE_ROUTE, content=body)
        if response.status_code != 200:
            raise self._error(response)
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise EndpointError(
                f"bad /tokenize answer: {exc}", endpoint=self.url, kind=FaultKind.GARBAGE
            ) from exc
        if not (isinstance(answer, list) and len(answer) == len(texts)):
            raise EndpointError(
                "bad /tokenize answer: not one token list per input",
                endpoint=self.url,
                kind=FaultKind.GARBAGE,
            )
        return [len(tokens) if isinstance(tokens, list) else 0 for tokens in answer]

    async def _request(
        self, method: str, route: str, *, content: bytes | None = None
    ) -> httpx.Response:
        try:
            return await self._http.request(
                method,
                self.url + route,
                content=content,
                headers=self._headers,
                auth=self._auth or httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TimeoutException as exc:
            raise EndpointError(
                f"{route} timed out", endpoint=self.url, kind=FaultKind.TIMEOUT
            ) from exc
        except httpx.HTTPError as exc:
            # Connection refused/reset, a truncated body, a protocol violation.
            message = redact(f"{route} failed: {type(exc).__name__}: {exc}".rstrip(": "))
            raise EndpointError(message, endpoint=self.url, kind=FaultKind.CONNECTION) from exc

    def _error(self, response: httpx.Response) -> EndpointError:
        content_type = response.headers.get("content-type")
        answer = tei.decode_error(response.status_code, response.content, content_type)
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
                kind=FaultKind.REJECTED,
                status=status,
                error_type=answer.error_type,
            )
        kind = _KIND_BY_STATUS.get(status, FaultKind.SERVER_ERROR)
        return EndpointError(
            message, endpoint=self.url, kind=kind, status=status, error_type=answer.error_type
        )


# TEI's status codes for the server's own trouble (tei_protocol.ErrorType); any other status is
# a server error too: none of them is the request's content.
_KIND_BY_STATUS = {
    tei.ErrorType.OVERLOADED.status: FaultKind.OVERLOADED,
    tei.ErrorType.UNHEALTHY.status: FaultKind.UNHEALTHY,
    tei.ErrorType.BACKEND.status: FaultKind.BACKEND,
}

"""HTTP to one embedding endpoint; every failure comes out as an :class:`EndpointError`.

Its kind is probed (TEI's ``/info``, then an OpenAI-style model listing: vLLM's and hosted
APIs' ``/v1/models``, Infinity's ``/models``) or named in the URL's scheme: ``tei+http://``
speaks ``/embed``, ``openai+http://`` the OpenAI embeddings route with base64 vectors (a TEI
server answers both; a plain ``http://`` TEI is spoken to on ``/embed``).

This is where an endpoint's URL enters the fleet, so it is also where credentials in it
(``http://user:token@host``) are taken out: they travel as HTTP basic auth, and the endpoint's
name, used in every log line, error and metric label, is the URL without them.
"""

from __future__ import annotations

import email.utils
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
from embedder.fleet import openai_protocol as openai
from embedder.fleet import tei_protocol as tei
from embedder.fleet.protocol import EmbedOptions, EmbedWire, ServerInfo, ServerKind, WireApi
from embedder.logs import redact

_SCHEMES = {"tei": WireApi.TEI, "openai": WireApi.OPENAI}


@dataclass(frozen=True, slots=True)
class Address:
    url: str  # the server root, without credentials: safe to show anywhere
    auth: httpx.BasicAuth | None  # the credentials the URL carried, if any
    api: WireApi | None = None  # named by the scheme (``openai+https://``); None: probed


def address(url: str) -> Address:
    """``http://u:p@host:18080/embed``, ``http://host:18080`` and ``openai+http://host/v1/
    embeddings`` all name a server root (``/v1`` kept: an OpenAI-style base URL)."""
    parts = urlsplit(url.strip())
    api_name, plus, scheme = parts.scheme.rpartition("+")
    api = _SCHEMES.get(api_name) if plus else None
    if scheme not in ("http", "https") or not parts.hostname or (plus and api is None):
        raise ConfigurationError(
            f"endpoint URL {redact(url)!r} is not an http(s) URL (optionally tei+ or openai+)"
        )
    path = parts.path.rstrip("/")
    for route in (tei.EMBED_ROUTE, "/embeddings"):
        if path.endswith(route):
            path = path[: -len(route)]
    host = parts.netloc.rpartition("@")[2]
    auth = None
    if parts.username is not None or parts.password is not None:
        auth = httpx.BasicAuth(unquote(parts.username or ""), unquote(parts.password or ""))
    return Address(urlunsplit((scheme, host, path, "", "")), auth, api)


@dataclass(frozen=True, slots=True)
class EndpointReply:
    """One endpoint's answer to an embed request (the worker's ``Embedded`` is a doc once sent)."""

    vectors: np.ndarray
    tokens: int | None  # from x-compute-tokens or usage.prompt_tokens, when the server says
    seconds: float


class EndpointClient:
    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        *,
        api_key: str | None = None,
        model: str | None = None,
    ) -> None:
        where = address(url)
        self.url = where.url
        self.api = where.api
        self._model = model  # the OpenAI ``model`` to ask for; None: the only one listed
        self._auth = where.auth
        self._http = http
        self.kind: ServerKind | None = None  # known once info() has answered
        self.wire: EmbedWire = tei.TeiWire()
        self._models_route = "/v1/models"  # where its model listing answered
        self._headers = {"content-type": "application/json"}
        if api_key:  # TEI's --api-key; it takes the place of the URL's credentials
            self._headers["authorization"] = f"Bearer {api_key}"
            self._auth = None

    def __repr__(self) -> str:
        return f"EndpointClient({self.url})"

    async def info(self) -> ServerInfo:
        """What the server is and serves: probed at every call (a server may be replaced)."""
        if self.api is not WireApi.OPENAI or not self.url.endswith("/v1"):
            response = await self._request("GET", "/info")
            tei_info = self._tei_info(response) if response.status_code == 200 else None
            if tei_info is not None:
                self.kind = ServerKind.TEI
                self.wire = (
                    openai.OpenAIWire("/v1/embeddings", None, ServerKind.TEI)
                    if self.api is WireApi.OPENAI
                    else tei.TeiWire()
                )
                return tei_info.server_info()
            if self.api is WireApi.TEI or response.status_code not in (200, 404, 405):
                raise (
                    self._error(response)
                    if response.status_code != 200
                    else self._garbage(f"/info answer is not TEI's: {_described(response)}")
                )
        return await self._openai_info()

    def _tei_info(self, response: httpx.Response) -> tei.Info | None:
        try:
            return tei.Info.from_json(response.json())
        except (ValueError, TypeError, AttributeError, tei.ProtocolError):
            return None

    async def _openai_info(self) -> ServerInfo:
        prefixes = ("",) if self.url.endswith("/v1") else ("/v1", "")
        last: httpx.Response | None = None
        for prefix in prefixes:
            response = await self._request("GET", prefix + "/models")
            if response.status_code != 200:
                last = response
                continue
            try:
                listing = response.json()
                version = await self._vllm_version() if _owned_by(listing) == "vllm" else ""
                info = openai.server_info(listing, requested=self._model, version=version)
            except (ValueError, tei.ProtocolError) as exc:
                if isinstance(exc, tei.ProtocolError) and "expected" in str(exc):
                    raise ConfigurationError(f"{self.url}: {exc}") from exc
                raise self._garbage(f"{prefix}/models answer is unusable: {exc}") from exc
            self.kind = info.kind
            self.wire = openai.OpenAIWire(prefix + "/embeddings", info.served_model_name, info.kind)
            self._models_route = prefix + "/models"
            return info
        assert last is not None
        if last.status_code == 404:
            page = openai.decode_error(404, last.content, last.headers.get("content-type"))
            raise EndpointError(
                "answers neither TEI's /info nor an OpenAI model listing (/v1/models, /models): "
                + page.message,
                endpoint=self.url,
                kind=FaultKind.WRONG_MODEL,
                status=404,
            )
        raise self._error(last)

    async def _vllm_version(self) -> str:
        response = await self._request("GET", "/version")
        if response.status_code != 200:
            return ""
        try:
            return str(response.json().get("version", ""))
        except (ValueError, AttributeError):
            return ""

    async def healthy(self) -> bool:
        # A hosted API has no /health: its model listing says it is there.
        hosted = self.kind is ServerKind.OPENAI
        where = self.url + self._models_route if hosted else _root(self.url) + "/health"
        try:
            response = await self._http.get(
                where,
                timeout=5.0,
                headers=self._headers,
                auth=self._auth or httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def embed(self, texts: list[str], options: EmbedOptions) -> EndpointReply:
        wire = self.wire
        body = wire.encode(texts, options)
        started = time.perf_counter()
        response = await self._request("POST", wire.route, content=body)
        if response.status_code != 200:
            raise self._error(response)
        try:
            vectors, tokens = wire.decode(response.content, len(texts))
        except tei.ProtocolError as exc:
            raise self._garbage(f"bad answer: {exc}") from exc
        if tokens is None:
            header = response.headers.get(tei.HEADER_COMPUTE_TOKENS)
            tokens = int(header) if header and header.isdigit() else None
        return EndpointReply(vectors, tokens, time.perf_counter() - started)

    def _garbage(self, message: str) -> EndpointError:
        return EndpointError(message, endpoint=self.url, kind=FaultKind.GARBAGE)

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
        answer = openai.decode_error(response.status_code, response.content, content_type)
        status, message = answer.status, answer.message or f"HTTP {answer.status}"
        if status in (401, 403):
            raise ConfigurationError(
                f"{self.url} refused our credentials (HTTP {status}); check --tei-api-key "
                "(EMBEDDER_TEI_API_KEY)"
            )
        if status == 413:
            return BatchTooLargeError(message, endpoint=self.url, status=status, limit=None)
        limit = openai.parse_batch_limit(message)
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
            message,
            endpoint=self.url,
            kind=kind,
            status=status,
            error_type=answer.error_type,
            retry_after_s=retry_after(response.headers.get("retry-after")),
        )


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delay-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _owned_by(listing: object) -> str:
    data = listing.get("data") if isinstance(listing, dict) else None
    first = data[0] if isinstance(data, list) and data else None
    return str(first.get("owned_by", "")) if isinstance(first, dict) else ""


def _root(url: str) -> str:
    """The server's root for /health: an OpenAI base URL's ``/v1`` taken off."""
    return url[: -len("/v1")] if url.endswith("/v1") else url


# The status codes of the server's own trouble (TEI's tei_protocol.ErrorType; vLLM's and
# Infinity's 429, 503 and 500); any other status is a server error too: none of them is the
# request's content. A 404 is a model the server no longer serves (vLLM: "The model `x` does
# not exist."), or a route it no longer has: another server behind the address.
_KIND_BY_STATUS = {
    tei.ErrorType.OVERLOADED.status: FaultKind.OVERLOADED,
    tei.ErrorType.UNHEALTHY.status: FaultKind.UNHEALTHY,
    tei.ErrorType.BACKEND.status: FaultKind.BACKEND,
    404: FaultKind.WRONG_MODEL,
}


def _described(response: httpx.Response) -> str:
    """An answer in a few words: a web page named by its type, never shown."""
    content_type = response.headers.get("content-type")
    if tei.is_web_page(response.content, content_type):
        return f"a {(content_type or 'text/html').split(';')[0].strip()} page"
    return response.content[:120].decode("utf-8", "replace").strip() or "an empty body"

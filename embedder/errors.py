"""One exception tree for the whole package, and the one table of what an endpoint fault means.

Callers catch the family they mean: a configuration mistake is reported before any work
starts, an endpoint failure is retried or routed around, a storage failure stops marking.
Third-party exceptions are translated at the boundary that meets them (``raise ... from``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class EmbedderError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigurationError(EmbedderError):
    """Settings, indexes or the fleet do not allow a run to start."""


class QueueError(EmbedderError):
    """The MongoDB work queue could not be read or written."""


class FaultKind(enum.StrEnum):
    """What went wrong with one request to one endpoint; the value is its metric label."""

    CONNECTION = "connection"  # refused, reset, a truncated body
    TIMEOUT = "timeout"
    OVERLOADED = "overloaded"  # 429: no free permit
    UNHEALTHY = "unhealthy"  # 503
    SERVER_ERROR = "server_error"  # another 5xx, or a status TEI does not send
    BACKEND = "backend"  # 424: the forward pass failed (CUDA out of memory, a driver fault)
    GARBAGE = "garbage"  # not JSON, wrong count, ragged, NaN
    WRONG_DIMENSION = "wrong_dimension"
    WRONG_MODEL = "wrong_model"  # /info names another model or output setting than at start
    TOO_LARGE = "too_large"  # 413, or a batch over the server's client batch size
    REJECTED = "rejected"  # 422/400: a validation or tokenizer error on the request's content

    @property
    def means(self) -> Consequences:
        return FAULTS[self]


@dataclass(frozen=True, slots=True)
class Consequences:
    """What a fault kind means. Retries, ejection, marking and metrics all read this."""

    endpoint_fault: bool  # the endpoint's doing, never a document's
    retried: bool  # the request is sent again as it is, elsewhere where possible
    counts_against_endpoint: bool  # towards ejecting it (``eject_after`` in a row)
    ejects_at_once: bool  # the endpoint leaves rotation at the first one
    shrinks_limit: bool  # the endpoint's concurrency limit is halved
    splits: bool  # the request is divided: the server refused it for its size or content
    fails_doc: bool  # a single input refused so, confirmed in isolation, fails its doc
    # One input can cause it on any server (NaN from an fp16 overflow, a forward pass that
    # fails on that text): when the endpoint still embeds the probe text well, the fault is
    # not counted against it and the request is divided as a refused one is (``splits``); a
    # single input so answered by two endpoints that answer the probe well fails its doc.
    # When the probe fails too, the row's other columns apply: it was the endpoint's fault.
    narrows_first: bool = False


# A server's fault: retried elsewhere, against the endpoint, never the doc's.
_SERVER = Consequences(
    endpoint_fault=True,
    retried=True,
    counts_against_endpoint=True,
    ejects_at_once=False,
    shrinks_limit=False,
    splits=False,
    fails_doc=False,
)
# The request's content: divided down to the input at fault, which fails once confirmed.
_CONTENT = Consequences(
    endpoint_fault=False,
    retried=False,
    counts_against_endpoint=False,
    ejects_at_once=False,
    shrinks_limit=False,
    splits=True,
    fails_doc=True,
)

# A server's fault, unless the server still answers well: then narrowed down to the input.
_SUSPECT = replace(_SERVER, narrows_first=True)

FAULTS: dict[FaultKind, Consequences] = {
    FaultKind.CONNECTION: _SERVER,
    FaultKind.TIMEOUT: replace(_SERVER, shrinks_limit=True),
    # A busy server is a healthy one: fewer requests, not ejection.
    FaultKind.OVERLOADED: replace(_SERVER, counts_against_endpoint=False, shrinks_limit=True),
    FaultKind.UNHEALTHY: _SERVER,
    FaultKind.SERVER_ERROR: _SERVER,
    FaultKind.BACKEND: _SUSPECT,
    FaultKind.GARBAGE: _SUSPECT,
    # Vectors of another size or model are never a passing glitch.
    FaultKind.WRONG_DIMENSION: replace(_SERVER, ejects_at_once=True),
    FaultKind.WRONG_MODEL: replace(_SERVER, ejects_at_once=True),
    FaultKind.TOO_LARGE: _CONTENT,
    FaultKind.REJECTED: _CONTENT,
}


class EndpointError(EmbedderError):
    """An embedding endpoint failed a request; ``kind`` says what that means (``FAULTS``)."""

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        kind: FaultKind,
        status: int | None = None,
        error_type: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{endpoint}: {message}")
        self.endpoint = endpoint
        self.kind = kind
        self.status = status
        self.error_type = error_type
        self.reason = message
        # The server's Retry-After: the endpoint gets nothing new until then (hosted APIs and
        # proxies send it with 429 and 503; TEI, vLLM and Infinity do not).
        self.retry_after_s = retry_after_s

    @property
    def means(self) -> Consequences:
        return self.kind.means


class BatchTooLargeError(EndpointError):
    """The endpoint refused the request for its size; the batch must be split."""

    def __init__(self, message: str, *, endpoint: str, status: int, limit: int | None) -> None:
        super().__init__(
            message,
            endpoint=endpoint,
            kind=FaultKind.TOO_LARGE,
            status=status,
            error_type="Validation",
        )
        self.limit = limit


class InputRejectedError(EndpointError):
    """The endpoint refused the request for its content (a validation or tokenizer error)."""


class FleetUnavailableError(EmbedderError):
    """No endpoint answered for longer than the outage bound."""


class StorageError(EmbedderError):
    """A shard could not be written or made durable."""

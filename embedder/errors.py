"""One exception tree for the whole package.

Callers catch the family they mean: a configuration mistake is reported before any work
starts, an endpoint failure is retried or routed around, a storage failure stops marking.
Third-party exceptions are translated at the boundary that meets them (``raise ... from``).
"""


class EmbedderError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigurationError(EmbedderError):
    """Settings, indexes or the fleet do not allow a run to start."""


class QueueError(EmbedderError):
    """The MongoDB work queue could not be read or written."""


FLEET_FAULTS = frozenset({"connection", "timeout", "overloaded", "unhealthy", "server_error"})


class EndpointError(EmbedderError):
    """An embedding endpoint failed a request.

    ``kind`` names the failure for metrics and retry policy: ``connection``, ``timeout``,
    ``overloaded``, ``unhealthy`` and ``server_error`` are the fleet's fault and are retried
    as long as the outage bound allows; ``backend`` and ``garbage`` may be the request's
    fault and are retried a few times, then narrowed down; ``too_large`` and ``rejected``
    are about the request itself and are never retried as they are.
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        kind: str,
        status: int | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(f"{endpoint}: {message}")
        self.endpoint = endpoint
        self.kind = kind
        self.status = status
        self.error_type = error_type
        self.reason = message

    @property
    def fleet_fault(self) -> bool:
        return self.kind in FLEET_FAULTS


class BatchTooLargeError(EndpointError):
    """The endpoint refused the request for its size; the batch must be split."""

    def __init__(self, message: str, *, endpoint: str, status: int, limit: int | None) -> None:
        super().__init__(
            message, endpoint=endpoint, kind="too_large", status=status, error_type="Validation"
        )
        self.limit = limit


class InputRejectedError(EndpointError):
    """The endpoint refused the request for its content (a validation or tokenizer error)."""


class FleetUnavailableError(EmbedderError):
    """No endpoint answered for longer than the outage bound."""


class StorageError(EmbedderError):
    """A shard could not be written or made durable."""

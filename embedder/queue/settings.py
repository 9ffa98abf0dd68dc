"""How a worker uses the work queue: claim size, lease TTL, and how long MongoDB may be gone."""

from __future__ import annotations

from dataclasses import dataclass

from embedder.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class WorkQueueSettings:
    claim_size: int = 1000  # docs per lease
    lease_ttl_s: float = 60.0  # before a silent worker's leases may be taken over
    outage_timeout_s: float = 600.0  # MongoDB outages waited out before the worker fails

    def __post_init__(self) -> None:
        if self.claim_size < 1:
            raise ConfigurationError(f"the claim size must be at least 1, not {self.claim_size}")
        # Heartbeats come every third of the TTL; under a second, a busy worker misses them
        # and takes over its own leases.
        if not self.lease_ttl_s >= 1:
            raise ConfigurationError(f"the lease TTL must be at least 1s, not {self.lease_ttl_s}")
        if not self.outage_timeout_s >= 0:
            raise ConfigurationError(
                f"the MongoDB outage timeout must be 0 or more, not {self.outage_timeout_s}"
            )

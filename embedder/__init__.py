"""embedder: embed MongoDB text collections on a TEI fleet into Parquet, crash-safely."""

__version__ = "0.1.0"

from embedder.errors import (
    ConfigurationError,
    EmbedderError,
    EndpointError,
    FleetUnavailableError,
    QueueError,
    StorageError,
)

__all__ = [
    "ConfigurationError",
    "EmbedderError",
    "EndpointError",
    "FleetUnavailableError",
    "QueueError",
    "StorageError",
    "__version__",
]

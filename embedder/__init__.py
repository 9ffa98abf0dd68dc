"""embedder: embed MongoDB text collections on a TEI fleet into Parquet, crash-safely.

The public API, in four groups:

- run a job: ``run_embed(EmbedJob(...))`` with the stages' settings (``QueueSpec``,
  ``FleetSettings``, ``ShardSettings``, ``WorkerSettings``) on a queue whose indexes
  ``ensure_indexes`` made; it returns a ``Summary``;
- after a run: ``Consolidator(ConsolidateSettings(...))`` and ``verify(...)``;
- build a worker of your own (a queue other than MongoDB, as the benchmarks do): ``Worker`` over
  any ``WorkQueue`` (whose claims are ``Claim``/``Lease``/``DoneMark``), a ``Fleet``, a
  ``ShardWriter`` and ``Telemetry``, with optional ``TextReuse`` keyed by ``embed_key`` and a
  ``VectorCache``;
- one error tree rooted at ``EmbedderError``.

Names are imported on first use (PEP 562), so ``import embedder.serve`` or a CLI command does not
load pyarrow, DuckDB or pymongo unless it uses them. Besides these names, three programs are
public: the CLI (``python -m embedder``), the TEI-compatible server ``embedder.serve`` with its
backends, and ``embedder.devtools`` (demo, embedded MongoDB, sample corpus). Everything else is
internal and may move.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that owns it. A name is listed three times (here, in __all__, in the
# TYPE_CHECKING imports for mypy); tests/test_public_api.py checks that the three agree.
_OWNERS: dict[str, str] = {
    # running a job
    "EmbedJob": "embedder.worker.runner",
    "run_embed": "embedder.worker.runner",
    "QueueSpec": "embedder.queue.spec",
    "ensure_indexes": "embedder.queue.connection",
    "FleetSettings": "embedder.fleet.routing",
    "RetryPolicy": "embedder.fleet.routing",
    "AdaptiveSettings": "embedder.fleet.limits",
    "ShardSettings": "embedder.storage.shards",
    "WorkerSettings": "embedder.worker.pipeline",
    "WorkQueueSettings": "embedder.queue.settings",
    "Summary": "embedder.telemetry",
    # after a run
    "ConsolidateSettings": "embedder.storage.consolidate",
    "Consolidator": "embedder.storage.consolidate",
    "verify": "embedder.ops.verify",
    "VerifyReport": "embedder.ops.verify",
    "Verdict": "embedder.ops.verify",
    # a worker of your own
    "Worker": "embedder.worker.pipeline",
    "WorkQueue": "embedder.worker.pipeline",
    "LeaseTracker": "embedder.worker.pipeline",
    "Claim": "embedder.queue.work_queue",
    "AwaitedLease": "embedder.queue.work_queue",
    "DoneMark": "embedder.queue.marks",
    "WorkerProgress": "embedder.queue.heartbeat",
    "ShardMetadata": "embedder.storage.schema",
    "Lease": "embedder.queue.leases",
    "Fleet": "embedder.fleet.routing",
    "ShardWriter": "embedder.storage.shards",
    "Telemetry": "embedder.telemetry",
    "TextReuse": "embedder.worker.reuse",
    "VectorCache": "embedder.worker.vector_cache",
    "embed_key": "embedder.identity",
    # errors
    "EmbedderError": "embedder.errors",
    "ConfigurationError": "embedder.errors",
    "QueueError": "embedder.errors",
    "EndpointError": "embedder.errors",
    "BatchTooLargeError": "embedder.errors",
    "InputRejectedError": "embedder.errors",
    "FleetUnavailableError": "embedder.errors",
    "StorageError": "embedder.errors",
    "CannotVerifyError": "embedder.ops.verify",
}

__all__ = [
    "AdaptiveSettings",
    "AwaitedLease",
    "BatchTooLargeError",
    "CannotVerifyError",
    "Claim",
    "ConfigurationError",
    "ConsolidateSettings",
    "Consolidator",
    "DoneMark",
    "EmbedJob",
    "EmbedderError",
    "EndpointError",
    "Fleet",
    "FleetSettings",
    "FleetUnavailableError",
    "InputRejectedError",
    "Lease",
    "LeaseTracker",
    "QueueError",
    "QueueSpec",
    "RetryPolicy",
    "ShardMetadata",
    "ShardSettings",
    "ShardWriter",
    "StorageError",
    "Summary",
    "Telemetry",
    "TextReuse",
    "VectorCache",
    "Verdict",
    "VerifyReport",
    "WorkQueue",
    "WorkQueueSettings",
    "Worker",
    "WorkerProgress",
    "WorkerSettings",
    "__version__",
    "embed_key",
    "ensure_indexes",
    "run_embed",
    "verify",
]

if TYPE_CHECKING:
    from embedder.errors import (
        BatchTooLargeError,
        ConfigurationError,
        EmbedderError,
        EndpointError,
        FleetUnavailableError,
        InputRejectedError,
        QueueError,
        StorageError,
    )
    from embedder.fleet.limits import AdaptiveSettings
    from embedder.fleet.routing import Fleet, FleetSettings, RetryPolicy
    from embedder.identity import embed_key
    from embedder.ops.verify import CannotVerifyError, Verdict, VerifyReport, verify
    from embedder.queue.connection import ensure_indexes
    from embedder.queue.heartbeat import WorkerProgress
    from embedder.queue.leases import Lease
    from embedder.queue.marks import DoneMark
    from embedder.queue.settings import WorkQueueSettings
    from embedder.queue.spec import QueueSpec
    from embedder.queue.work_queue import AwaitedLease, Claim
    from embedder.storage.consolidate import ConsolidateSettings, Consolidator
    from embedder.storage.schema import ShardMetadata
    from embedder.storage.shards import ShardSettings, ShardWriter
    from embedder.telemetry import Summary, Telemetry
    from embedder.worker.pipeline import LeaseTracker, Worker, WorkerSettings, WorkQueue
    from embedder.worker.reuse import TextReuse
    from embedder.worker.runner import EmbedJob, run_embed
    from embedder.worker.vector_cache import VectorCache


def __getattr__(name: str) -> Any:
    owner = _OWNERS.get(name)
    if owner is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(owner), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

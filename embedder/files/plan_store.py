"""The chunk plan beside the output: made once, by one worker, read by every other.

The first worker to find no plan takes the planning lease (the same exclusive create as a
chunk's) and writes the plan; the others wait for it. A plan made for other rows, another
part, another chunk size or other corpus files is refused: each such run has its own output.
"""

from __future__ import annotations

import logging
import time

import orjson
import pyarrow as pa

from embedder.errors import ConfigurationError, StorageError
from embedder.files.layout import FilesOutput
from embedder.files.plan import ChunkPlan, Selection, build_plan, fingerprint
from embedder.files.readers import CorpusReader
from embedder.storage import filesystems as storage
from embedder.storage.output_lease import ExclusiveCreate, LeaseHeld, LeaseKeeper, OutputLease

log = logging.getLogger(__name__)

_PLANNING_TTL_S = 60.0


def load_plan(output: FilesOutput) -> ChunkPlan:
    """The output's plan; ``ConfigurationError`` when it has none."""
    try:
        raw = storage.read_bytes(output.fs, output.plan)
    except FileNotFoundError:
        raise ConfigurationError(
            f"{output.uri} is not the output of a file corpus (no {output.plan})"
        ) from None
    except (OSError, pa.ArrowException) as exc:
        raise StorageError(f"cannot read {output.plan}: {exc}") from exc
    try:
        return ChunkPlan.from_bytes(raw)
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise StorageError(f"{output.plan} is damaged: {exc}") from exc


def ensure_plan(
    output: FilesOutput,
    reader: CorpusReader,
    selection: Selection,
    chunk_rows: int,
    *,
    create_exclusive: ExclusiveCreate | None = None,
    poll_s: float = 1.0,
) -> ChunkPlan:
    """The output's plan for this run: made here if no worker made it yet."""
    wanted = ChunkPlan(reader.source, fingerprint(reader), chunk_rows, selection, ())
    output.fs.create_dir(f"{output.root}/_files", recursive=True)
    waiting_logged = False
    while True:
        if storage.exists(output.fs, output.plan):
            plan = load_plan(output)
            problem = plan.mismatch(wanted)
            if problem is not None:
                raise ConfigurationError(
                    f"{output.uri} holds a run of {plan.source.uri} ({plan.selection.describe()}) "
                    f"that differs from this one ({problem}, the output's vs this run's): give "
                    "this run its own --output-dir"
                )
            return plan
        lease = OutputLease(
            output.fs, output.planning, ttl_s=_PLANNING_TTL_S, create_exclusive=create_exclusive
        )
        try:
            lease.acquire()
        except LeaseHeld as held:
            if not waiting_logged:
                log.info("waiting for the chunk plan (%s is making it)", held.holder.describe())
                waiting_logged = True
            time.sleep(poll_s)  # the planner may take a streaming pass over the corpus
            continue
        try:
            with LeaseKeeper(lease, _PLANNING_TTL_S):
                if not storage.exists(output.fs, output.plan):
                    plan = build_plan(reader, selection, chunk_rows)
                    storage.write_bytes_atomically(output.fs, output.plan, plan.to_bytes())
        finally:
            lease.release()

"""The shard schema and the metadata every shard (and every consolidated file) carries.

Columns are what one embedded doc leaves behind; the schema's key-value metadata says what made
them (model, options, queue). Writers build a ``ShardMetadata``; the consolidator, verify,
lineage, the vector cache and the worker's start-up check read one back with
``ShardMetadata.from_schema``, so no module spells a metadata key of its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from embedder.identity import TEXT_HASH_BYTES

_PREFIX = "embedder."


@dataclass(frozen=True, slots=True)
class ShardMetadata:
    """What made a file's rows. Files of older versions (or written by hand) may lack any
    key: it then reads as the default here."""

    model_id: str = ""
    model_sha: str = ""
    embed_key: str = ""  # the model with its options (embedder.identity.embed_key)
    dimension: int | None = None
    normalize: bool = True  # vectors are unit length
    truncate: str = ""  # "server" (the server's setting), "true" or "false"
    queue: str = ""  # QueueSpec.key of the queue whose docs these are
    target_field: str = ""
    embedder_version: str = ""

    def to_schema_metadata(self) -> dict[str, str]:
        """The schema's key-value pairs (``embedder.<field>``)."""
        pairs: dict[str, str] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is None:
                continue
            pairs[_PREFIX + item.name] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
        return pairs

    @classmethod
    def from_schema(cls, schema: pa.Schema) -> ShardMetadata:
        raw = {
            key.decode()[len(_PREFIX) :]: value.decode()
            for key, value in (schema.metadata or {}).items()
            if key.startswith(_PREFIX.encode())
        }
        dimension = raw.get("dimension", "")
        return cls(
            model_id=raw.get("model_id", ""),
            model_sha=raw.get("model_sha", ""),
            embed_key=raw.get("embed_key", ""),
            dimension=int(dimension) if dimension.isdigit() else None,
            normalize=raw.get("normalize", "true") == "true",
            truncate=raw.get("truncate", ""),
            queue=raw.get("queue", ""),
            target_field=raw.get("target_field", ""),
            embedder_version=raw.get("embedder_version", ""),
        )


@dataclass(frozen=True, slots=True)
class Footer:
    """What a shard's (or output file's) footer says, read without its rows."""

    schema: pa.Schema
    rows: int

    @property
    def metadata(self) -> ShardMetadata:
        return ShardMetadata.from_schema(self.schema)


def read_footer(fs: pafs.FileSystem, path: str) -> Footer:
    """Raises OSError or ArrowException for a file that is not (or no longer) Parquet."""
    with fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        return Footer(parquet.schema_arrow, parquet.metadata.num_rows)


def shard_schema(dimension: int, metadata: ShardMetadata) -> pa.Schema:
    return pa.schema(
        [
            pa.field("_id", pa.string(), nullable=False),
            pa.field("_id_kind", pa.dictionary(pa.int8(), pa.string()), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dimension), nullable=False),
            pa.field("model", pa.dictionary(pa.int8(), pa.string()), nullable=False),
            pa.field("model_sha", pa.dictionary(pa.int8(), pa.string()), nullable=False),
            # BLAKE2b-128 of the text as sent (embedder.identity): which text made the vector.
            pa.field("text_hash", pa.binary(TEXT_HASH_BYTES), nullable=False),
            pa.field("embedded_at", pa.timestamp("ms", tz="UTC"), nullable=False),
            # The claim that produced the row, issued by MongoDB (embedder.queue.work_queue.Claim.seq):
            # the consolidator keeps the row of the latest claim. Null in rows written
            # without one; shards of older versions lack the column.
            pa.field("claim_seq", pa.int64()),
        ],
        metadata=metadata.to_schema_metadata(),
    )

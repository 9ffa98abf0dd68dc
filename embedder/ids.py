"""Document ids: Parquet encoding that round-trips, and MongoDB's ordering of them.

A shard stores ``_id`` as a string plus the id's kind, so DuckDB or Polars users can join on
a plain string while :func:`decode_id` gives back the exact MongoDB value.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from bson import ObjectId, json_util

from embedder.errors import ConfigurationError

IdKind = Literal["objectid", "int", "string", "ejson"]


def encode_id(value: Any) -> tuple[str, IdKind]:
    if isinstance(value, ObjectId):
        return str(value), "objectid"
    if isinstance(value, bool):
        return json_util.dumps(value), "ejson"
    if isinstance(value, int):
        return str(value), "int"
    if isinstance(value, str):
        return value, "string"
    return json_util.dumps(value), "ejson"


def decode_id(text: str, kind: str) -> Any:
    if kind == "objectid":
        return ObjectId(text)
    if kind == "int":
        return int(text)
    if kind == "string":
        return text
    if kind == "ejson":
        return json_util.loads(text)
    raise ValueError(f"unknown id kind {kind!r}")


# MongoDB's cross-type comparison order (BSON spec), for the kinds a queue may hold. bool
# comes first in the lookup because it is an int subclass, as is bson's Int64.
_TYPE_RANK: tuple[tuple[type, int], ...] = (
    (bool, 8),
    (int, 2),
    (float, 2),
    (str, 3),
    (ObjectId, 7),
    (dt.datetime, 9),
)


def sort_key(value: Any) -> tuple[int, Any]:
    """A key under which Python orders ids the way MongoDB sorts ``_id``.

    Leases are ``_id`` ranges, so a worker must decide "is this id inside [lo, hi]" the same
    way the server does. Mixed kinds in one collection are ordered by BSON type first.
    """
    rank = next((r for kind, r in _TYPE_RANK if isinstance(value, kind)), None)
    if rank is None:
        raise ConfigurationError(
            f"_id of type {type(value).__name__} is not supported by the work queue "
            "(use ObjectId, integer, string or date ids)"
        )
    if isinstance(value, str):
        # MongoDB compares strings by their UTF-8 bytes (simple binary collation).
        return rank, value.encode("utf-8", "surrogatepass")
    if isinstance(value, ObjectId):
        return rank, value.binary
    return rank, value

"""Document ids: Parquet encoding that round-trips, MongoDB's ordering of them, and
``_id`` ranges walked the way MongoDB compares them (a type at a time).

A shard stores ``_id`` as a string plus the id's kind, so DuckDB or Polars users can join on
a plain string while :func:`decode_id` gives back the exact MongoDB value.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class IdType:
    """A BSON type class an ``_id`` may have: its place in MongoDB's cross-type order, and
    the ``$type`` alias that selects it (every numeric type is one class, "number")."""

    rank: int
    alias: str


NUMBER = IdType(2, "number")
STRING = IdType(3, "string")
OBJECT_ID = IdType(7, "objectId")
BOOL = IdType(8, "bool")
DATE = IdType(9, "date")
ID_TYPES: tuple[IdType, ...] = (NUMBER, STRING, OBJECT_ID, BOOL, DATE)  # MongoDB's order

# bool comes first in the lookup because it is an int subclass, as is bson's Int64.
_KINDS: tuple[tuple[type, IdType], ...] = (
    (bool, BOOL),
    (int, NUMBER),
    (float, NUMBER),
    (str, STRING),
    (ObjectId, OBJECT_ID),
    (dt.datetime, DATE),
)


def id_type(value: Any) -> IdType:
    kind = next((t for kind, t in _KINDS if isinstance(value, kind)), None)
    if kind is None:
        raise ConfigurationError(
            f"_id of type {type(value).__name__} is not supported by the work queue "
            "(use ObjectId, integer, string or date ids)"
        )
    return kind


def sort_key(value: Any) -> tuple[int, Any]:
    """A key under which Python orders ids the way MongoDB sorts ``_id``.

    Leases are ``_id`` ranges, so a worker must decide "is this id inside [lo, hi]" the same
    way the server does. Mixed kinds in one collection are ordered by BSON type first.
    """
    rank = id_type(value).rank
    if isinstance(value, str):
        # MongoDB compares strings by their UTF-8 bytes (simple binary collation).
        return rank, value.encode("utf-8", "surrogatepass")
    if isinstance(value, ObjectId):
        return rank, value.binary
    return rank, value


@dataclass(frozen=True, slots=True)
class Bound:
    """One end of an ``_id`` range."""

    value: Any
    inclusive: bool


def after(value: Any) -> Bound | None:
    """The lower bound "past ``value``"; None (from the start) when ``value`` is None."""
    return None if value is None else Bound(value, inclusive=False)


def range_clauses(lower: Bound | None = None, upper: Bound | None = None) -> list[dict[str, Any]]:
    """An ``_id`` range in MongoDB's order as one predicate per BSON type it spans, in order.

    MongoDB's ``$gt``/``$lt`` match values of their operand's type only (type bracketing): a
    single ``{$gt: 5}`` never reaches a string or an ObjectId, so a range that crosses types
    has to be read type by type. Each clause names its type with ``$type`` (which also keeps
    a lenient server to the type) plus the range's bounds within that type; on the ``_id``
    index, ``$type`` and the bounds intersect into one index range. Unbounded ends cover
    every type the work queue supports.
    """
    first = 0 if lower is None else ID_TYPES.index(id_type(lower.value))
    last = len(ID_TYPES) - 1 if upper is None else ID_TYPES.index(id_type(upper.value))
    clauses: list[dict[str, Any]] = []
    for position in range(first, last + 1):
        clause: dict[str, Any] = {"$type": ID_TYPES[position].alias}
        if lower is not None and position == first:
            clause["$gte" if lower.inclusive else "$gt"] = lower.value
        if upper is not None and position == last:
            clause["$lte" if upper.inclusive else "$lt"] = upper.value
        clauses.append(clause)
    return clauses


def unsupported_clause() -> dict[str, Any]:
    """Matches an ``_id`` of a type the work queue cannot page (and so would never reach)."""
    return {"$not": {"$type": [t.alias for t in ID_TYPES]}}


async def read_range[T](
    read: Callable[[dict[str, Any], int], Awaitable[list[T]]],
    limit: int,
    lower: Bound | None = None,
    upper: Bound | None = None,
) -> list[T]:
    """The first ``limit`` items of an ``_id`` range in ``_id`` order, read a type at a time.

    ``read(clause, n)`` returns at most ``n`` items whose ``_id`` matches ``clause``, in
    ``_id`` order; the next type is read only while the page is not yet full.
    """
    page: list[T] = []
    for clause in range_clauses(lower, upper):
        page += await read(clause, limit - len(page))
        if len(page) >= limit:
            break
    return page

"""mongoeco's wire server held to MongoDB's type bracketing: the suite's MongoDB.

MongoDB's ``$gt``/``$gte``/``$lt``/``$lte`` match only values of the operand's BSON type
("type bracketing": ``{_id: {$gt: 5}}`` never matches ``"abc"`` or an ObjectId); mongoeco
compares across types in BSON order, so code that pages ``_id`` ranges across types passes
on it and skips whole types on a real server. This process patches mongoeco's comparison so
that a value of another type never matches, then serves like ``embedder dev-mongo``.

Test-only: ``python -m tests.support.strict_mongo --port 0`` prints ``listening on mongodb://...``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
from collections.abc import Callable
from typing import Any

import bson
from mongoeco.compat import MONGODB_DIALECT_70
from mongoeco.core.compiled_query import CompiledQuery
from mongoeco.core.filtering import QueryEngine

from embedder.devtools import devmongo

_UNBRACKETED = (type(None), bson.MinKey, bson.MaxKey)  # null has its own rules; Min/MaxKey span


def bracket(value: Any, dialect: Any = MONGODB_DIALECT_70) -> int:
    """The BSON comparison class of ``value`` (every number is one class, as in MongoDB)."""
    order = dialect.bson_type_order
    if isinstance(value, bson.ObjectId):  # pymongo's, or mongoeco's subclass of it
        return next(int(r) for k, r in order.items() if issubclass(k, bson.ObjectId))
    # The first class in the MRO that has a rank: bool before int, bson.Int64 as int.
    return next((int(order[kind]) for kind in type(value).__mro__ if kind in order), 100)


def _comparable(value: Any, target: Any, dialect: Any) -> bool:
    if isinstance(target, _UNBRACKETED):
        return True
    return bracket(value, dialect) == bracket(target, dialect)


def _bracket_candidate(original: Callable[..., bool]) -> Callable[..., bool]:
    @functools.wraps(original)
    def compare(cls: type, candidate: Any, target: Any, operator: str, **options: Any) -> bool:
        del cls
        if not _comparable(candidate, target, options.get("dialect", MONGODB_DIALECT_70)):
            return False
        return original(candidate, target, operator, **options)

    return compare


def _bracket_top_level(original: Callable[..., bool]) -> Callable[..., bool]:
    @functools.wraps(original)
    def compare(
        cls: type, doc: dict[str, Any], field: str, target: Any, operator: str, **options: Any
    ) -> bool:
        del cls
        value = doc.get(field)
        dialect = options.get("dialect", MONGODB_DIALECT_70)
        # An array is compared element by element, each through the candidate check.
        if field in doc and not isinstance(value, list) and not _comparable(value, target, dialect):
            return False
        return original(doc, field, target, operator, **options)

    return compare


def _dotted_comparison_code(self: CompiledQuery, field: str, value: Any, operator: str) -> str:
    """Dotted paths in compiled filters: each candidate goes through the bracketed check
    (unpatched, they call the cross-type ``compare`` directly)."""
    field_key = self._field(field)
    value_key = self._store("value", value)
    if "." not in field:
        return (
            f"_top_compare(doc, {field_key}, {value_key}, {operator!r}, "
            "dialect=dialect, collation=collation)"
        )
    return (
        "any("
        f"_top_compare({{'v': candidate}}, 'v', {value_key}, {operator!r}, "
        "dialect=dialect, collation=collation)"
        f" for candidate in _extract(doc, {field_key})"
        ")"
    )


def install() -> None:
    """Apply type bracketing to range predicates in this process's mongoeco (idempotent)."""
    if getattr(QueryEngine, "_embedder_strict", False):
        return
    candidate = QueryEngine._comparison_matches_candidate
    top_level = QueryEngine._match_top_level_comparison
    QueryEngine._comparison_matches_candidate = classmethod(_bracket_candidate(candidate))  # type: ignore[method-assign,assignment]
    QueryEngine._match_top_level_comparison = classmethod(_bracket_top_level(top_level))  # type: ignore[method-assign,assignment]
    CompiledQuery._comparison_code = _dotted_comparison_code  # type: ignore[method-assign]
    QueryEngine._embedder_strict = True  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    install()
    asyncio.run(devmongo.run(args.host, args.port, None))


if __name__ == "__main__":
    main()

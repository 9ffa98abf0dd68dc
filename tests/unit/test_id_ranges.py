"""Id ranges as MongoDB clauses, without a server."""

from __future__ import annotations

from bson import ObjectId

from embedder.ids import Bound, range_clauses


def test_an_id_range_becomes_one_clause_per_type_in_mongodb_order() -> None:
    oid = ObjectId()
    assert range_clauses(Bound(5, inclusive=False), Bound(oid, inclusive=True)) == [
        {"$type": "number", "$gt": 5},
        {"$type": "string"},
        {"$type": "objectId", "$lte": oid},
    ]
    assert range_clauses(Bound("a", inclusive=True), Bound("b", inclusive=False)) == [
        {"$type": "string", "$gte": "a", "$lt": "b"}
    ]
    assert [c["$type"] for c in range_clauses()] == ["number", "string", "objectId", "bool", "date"]

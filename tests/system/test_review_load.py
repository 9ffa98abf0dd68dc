"""Review probes of ``embedder load``: ids MongoDB cannot hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson

from tests.system.test_load import db, load, write_lines

__all__ = ["db"]


def test_an_id_past_int64_is_that_records_bad_id_and_the_rest_load(
    mongo_uri: str, db_name: str, db: Any, tmp_path: Path
) -> None:
    """An integer id MongoDB cannot store (over 2**63 - 1) is one bad record named by its
    line; every other record of its batch is loaded and the exit code is 0."""
    lines = [json.dumps({"id": i, "text": f"text {i}"}) for i in range(10)]
    lines[4] = json.dumps({"id": 2**63 + 5, "text": "too big an id"})
    corpus = write_lines(tmp_path / "c.jsonl", lines)
    failures = tmp_path / "failures.jsonl"
    code, summary = load(
        mongo_uri,
        db_name,
        corpus,
        *("--collection", "c", "--id-field", "id", "--failures-file", str(failures)),
    )
    assert db.c.count_documents({}) == 9, summary
    bad = [orjson.loads(line) for line in failures.read_bytes().splitlines()]
    assert [b["line_or_row"] for b in bad] == [5], summary
    assert code == 0, summary

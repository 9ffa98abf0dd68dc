"""``embedder load``: a file corpus into MongoDB, bad records reported by line, resumable after
a kill with every record there exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from pymongo import MongoClient

from embedder.cli import cli
from tests.support.servers import ROOT


@pytest.fixture
def db(mongo_uri: str, db_name: str) -> Iterator[Any]:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    yield client[db_name]
    client.drop_database(db_name)
    client.close()


def load(mongo_uri: str, db_name: str, corpus: Path, *extra: str) -> tuple[int, str]:
    args = ["load", "--input", str(corpus), "--mongo-uri", mongo_uri, "--database", db_name, *extra]
    done = CliRunner().invoke(cli, args)
    if done.exception is not None and not isinstance(done.exception, SystemExit):
        raise done.exception
    return done.exit_code, done.stderr


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_bad_records_are_reported_by_line_and_a_rerun_skips_what_is_there(
    mongo_uri: str, db_name: str, db: Any, tmp_path: Path
) -> None:
    good = [json.dumps({"id": f"a{i}", "body": {"text": f"article {i}"}}) for i in range(40)]
    lines = [
        *good[:10],
        '{"id": "broken", "body": ',  # line 11
        "[1, 2, 3]",  # line 12
        json.dumps({"body": {"text": "no id"}}),  # line 13
        json.dumps({"id": "empty", "body": {"text": "  "}}),  # line 14
        json.dumps({"id": "number", "body": {"text": 42}}),  # line 15
        json.dumps({"id": "a3", "body": {"text": "another text under a3"}}),  # line 16
        *good[10:],
    ]
    corpus = write_lines(tmp_path / "papers.jsonl", lines)
    failures = tmp_path / "failures.jsonl"
    args = [
        *("--collection", "papers", "--text-field", "body.text", "--id-field", "id"),
        *("--batch-size", "7", "--failures-file", str(failures)),
    ]

    code, summary = load(mongo_uri, db_name, corpus, *args)
    assert code == 0, summary
    assert "inserted 40, already there 0, bad 6" in summary
    assert db.papers.count_documents({}) == 40
    assert db.papers.find_one({"_id": "a3"}) == {"_id": "a3", "body": {"text": "article 3"}}
    bad = [orjson.loads(line) for line in failures.read_bytes().splitlines()]
    assert [(b["line_or_row"], b["cause"]) for b in bad] == [
        (11, "malformed"),
        (12, "not_an_object"),
        (13, "missing_id"),
        (14, "empty_text"),
        (15, "not_string"),
        (16, "duplicate_id"),
    ]
    assert "with another text" in bad[-1]["reason"] and bad[-1]["id"] == "a3"
    assert "  bad record at line/row 11: not valid JSON" in summary

    again, summary = load(mongo_uri, db_name, corpus, *args)
    assert again == 0, summary
    assert "inserted 0, already there 40, bad 6" in summary
    assert db.papers.count_documents({}) == 40
    assert len(failures.read_bytes().splitlines()) == 6  # found again, not appended

    # Another format, ids from the row's position.
    table = pa.table({"text": [f"row {i}" for i in range(25)]})
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=10)
    code, summary = load(mongo_uri, db_name, tmp_path / "rows.parquet", "--collection", "rows")
    assert code == 0 and "inserted 25, already there 0, bad 0" in summary, summary
    assert db.rows.find_one({"_id": 24}) == {"_id": 24, "text": "row 24"}


def test_a_killed_load_resumes_with_every_record_once(
    mongo_uri: str, db_name: str, db: Any, tmp_path: Path
) -> None:
    n = 400
    corpus = write_lines(
        tmp_path / "corpus.jsonl", [json.dumps({"text": f"text {i}"}) for i in range(n)]
    )
    args = ["load", "--input", str(corpus), "--mongo-uri", mongo_uri, "--database", db_name]
    args += ["--collection", "docs", "--batch-size", "20"]
    log = (tmp_path / "load.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedder.cli", *args], cwd=ROOT, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 60
        while db.docs.count_documents({}) < 100:
            assert proc.poll() is None, (tmp_path / "load.log").read_text()
            assert time.monotonic() < deadline, "the load inserted nothing within 60 s"
            time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    before = db.docs.count_documents({})
    assert 100 <= before < n, "the load was not stopped midway"

    code, summary = load(mongo_uri, db_name, corpus, "--collection", "docs", "--batch-size", "20")
    assert code == 0, summary
    assert f"inserted {n - before}, already there {before}, bad 0" in summary
    ids = [d["_id"] for d in db.docs.find({}, {"_id": 1})]
    assert sorted(ids) == list(range(n))
    assert db.docs.find_one({"_id": 345}) == {"_id": 345, "text": "text 345"}


def test_another_unique_index_refusing_a_record_is_a_write_error(
    mongo_uri: str, db_name: str, db: Any, tmp_path: Path
) -> None:
    db.uniq.create_index("text", unique=True)
    corpus = write_lines(tmp_path / "c.jsonl", [json.dumps({"text": t}) for t in "aba"])
    for attempt in range(2):
        code, summary = load(mongo_uri, db_name, corpus, "--collection", "uniq")
        assert code == 1, summary
        inserted, there = (2, 0) if attempt == 0 else (0, 2)
        assert f"inserted {inserted}, already there {there}, bad 0" in summary
        assert "  write errors: 1" in summary and "  not written: line/row 3 (id 2): " in summary
    assert db.uniq.count_documents({}) == 2

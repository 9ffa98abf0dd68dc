"""What a new user meets in the first hour: the output found from anywhere, JSON logs from
every entry point, a worker that waits for its servers, text hashes kept across runs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from embedder.queue.output_location import recorded_output
from tests.support import corpus as corpora
from tests.support.servers import ROOT, FaultTei, free_port, start
from tests.support.worker import Workspace, seed


def run_cli(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m embedder <args>`` from ``cwd`` (the package imported from this checkout)."""
    return subprocess.run(
        [sys.executable, "-m", "embedder", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def json_lines(command: list[str]) -> list[dict[str, Any]]:
    """Run ``command`` from the repository root to success; every line of its stderr, parsed:
    a line that is not JSON fails the test."""
    done = await asyncio.to_thread(
        subprocess.run, command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stderr.splitlines() if line.strip()]


async def test_status_and_verify_find_the_output_from_the_queue_not_the_current_directory(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei: FaultTei, tmp_path: Path
) -> None:
    queue = await seed(mongo, ws.database, corpora.tweets(40))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The worker writes where its own directory says (relative), far from where we look.
    runs_in = tmp_path / "job"
    runs_in.mkdir()
    queue_args = ["--collection", "tweets", "--database", ws.database, "--mongo-uri", ws.mongo_uri]
    embedded = run_cli(
        ["embed", *queue_args, "--tei-urls", tei.url, "--once", "--output-dir", "out/shards"],
        cwd=runs_in,
    )
    assert embedded.returncode == 0, embedded.stderr
    shards = runs_in / "out" / "shards"
    assert (await recorded_output(mongo, queue)).shards == str(shards)

    status = run_cli(["status", *queue_args, "--json"], cwd=elsewhere)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["shards_dir"] == str(shards)
    # Consolidating with the queue and MongoDB records where the output went.
    consolidated = runs_in / "out" / "merged"
    merged = run_cli(
        [
            "consolidate",
            *queue_args,
            *("--shards-dir", str(shards)),
            "--consolidated-dir",
            str(consolidated),
        ],
        cwd=runs_in,
    )
    assert merged.returncode == 0, merged.stderr
    assert (await recorded_output(mongo, queue)).consolidated == str(consolidated)

    checked = run_cli(["verify", *queue_args], cwd=elsewhere)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "output: 40 rows" in checked.stdout and str(consolidated) in checked.stdout
    status = run_cli(["status", *queue_args, "--json"], cwd=elsewhere)
    assert json.loads(status.stdout)["consolidated_rows"] == 40
    # An explicit directory still wins over the recorded one.
    other = run_cli(["verify", *queue_args, "--consolidated-dir", "nowhere"], cwd=elsewhere)
    assert other.returncode == 3 and str(elsewhere / "nowhere") in other.stdout, other.stdout
    assert not list(elsewhere.iterdir())  # reading creates nothing


def test_consolidate_says_a_shards_directory_is_missing_and_creates_nothing(
    tmp_path: Path,
) -> None:
    done = run_cli(["consolidate", "--shards-dir", "no/such/shards"], cwd=tmp_path)
    assert done.returncode == 3  # could not run (README: Exit codes)
    assert f"no shards directory at {tmp_path / 'no/such/shards'}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "no").exists()


async def test_json_logs_from_the_seed_entry_point_carry_the_summary_as_fields(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei: FaultTei
) -> None:
    await seed(mongo, ws.database, corpora.tweets(20))
    args = ws.args([tei.url], "--once", "--log-json", "--log-level", "DEBUG")
    entries = await json_lines([sys.executable, *args])
    assert any(e["level"] == "debug" for e in entries)  # --log-level after the command
    (finished,) = [e for e in entries if e["message"].startswith("run finished")]
    assert finished["summary"]["embedded"] == 20
    assert finished["summary"]["failed"] == 5 and isinstance(
        finished["summary"]["elapsed_s"], float
    )
    # The seed's consolidation script too: its report as JSON fields, nothing else on stderr.
    dirs = ("--shards-dir", str(ws.shards), "--consolidated-dir", str(ws.root / "consolidated"))
    entries = await json_lines([sys.executable, "consolidate_embeddings.py", "--log-json", *dirs])
    (report,) = [e["report"] for e in entries if "report" in e]
    assert report["rows_out"] == 20


async def test_the_worker_waits_for_a_server_that_starts_late(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tmp_path: Path
) -> None:
    await seed(mongo, ws.database, corpora.tweets(20))
    url = f"http://127.0.0.1:{free_port()}"
    worker = ws.popen([url], "--once", "--wait-for-servers", "120")
    server = None
    try:
        await ws.wait_for(
            worker,
            lambda: "waiting for the embedding servers to answer /health" in ws.log(),
            "the worker to say it waits",
        )
        port = url.rsplit(":", 1)[1]
        server = start(["-m", "tests.support.fault_tei", "--port", port], tmp_path / "tei.log")
        code = await asyncio.to_thread(worker.wait, 120)
    finally:
        if worker.poll() is None:
            worker.kill()
        if server is not None:
            server.stop()
    assert code == 0, ws.log()
    assert ws.summary()["embedded"] == 20


async def test_the_wait_for_servers_is_bounded(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]]
) -> None:
    await seed(mongo, ws.database, corpora.tweets(5))
    url = f"http://127.0.0.1:{free_port()}"
    code = await asyncio.to_thread(ws.run, [url], "--once", "--wait-for-servers", "2")
    assert code != 0
    assert "no embedding server answered /health within --wait-for-servers 2 s" in ws.log()


async def test_text_hashes_stay_on_after_a_run_without_the_flag(
    ws: Workspace,
    mongo: AsyncMongoClient[dict[str, Any]],
    tei: FaultTei,
    tmp_path: Path,
) -> None:
    """A queue first run with --store-text-hash keeps its hashes in later runs without it, so
    ``requeue --changed-text`` sees the docs of every run."""
    first = corpora.tweets(10)
    queue = await seed(mongo, ws.database, first)
    assert await asyncio.to_thread(ws.run, [tei.url], "--once", "--store-text-hash") == 0
    tweets = mongo[ws.database]["tweets"]
    later = [
        {"_id": 1000 + i, "lang": "en", "classified": True, "text": f"later {i}"} for i in range(5)
    ]
    await tweets.insert_many(later)
    assert await asyncio.to_thread(ws.run, [tei.url], "--once", log="second.log") == 0
    for doc_id in (next(iter(first.eligible)), 1000):
        await tweets.update_one({"_id": doc_id}, {"$set": {"text": f"edited {doc_id}"}})
    found = run_cli(
        [
            "requeue",
            *("--collection", "tweets", "--database", ws.database),
            *("--mongo-uri", ws.mongo_uri, "--changed-text", "--json"),
        ],
        cwd=tmp_path,
    )
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["requeued"] == 2, found.stdout
    docs = {d["_id"]: d async for d in tweets.find({"_id": {"$in": [1000, 1001]}})}
    assert docs[1000].get(queue.target_field) is None
    assert docs[1001][queue.target_field]["text_hash"]

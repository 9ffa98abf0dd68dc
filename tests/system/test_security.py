"""Credentials never leak: not in logs, errors, metrics, summaries, shards or MongoDB (issue 7)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from tests.support import corpus as corpora
from tests.support.mongo import REAL_MONGO
from tests.support.servers import ROOT, FaultTei, free_port, run_python, start
from tests.support.worker import Workspace, seed

MONGO_SECRET = "m0ngo-Pa55-never-shown"
TEI_SECRET = "tei-key-never-shown"


@pytest.mark.skipif(bool(REAL_MONGO), reason="starts its own MongoDB with a user")
async def test_no_output_of_a_run_holds_a_secret(tmp_path: Path) -> None:
    os.environ["EMBEDDER_DEV_MONGO_PASSWORD"] = MONGO_SECRET
    try:
        db = start(
            ["-m", "embedder.cli", "dev-mongo", "--port", "0", "--user", "app"],
            tmp_path / "mongo.log",
        )
    finally:
        del os.environ["EMBEDDER_DEV_MONGO_PASSWORD"]
    host = db.address.removeprefix("mongodb://")
    uri = f"mongodb://app:{MONGO_SECRET}@{host}/?authSource=admin&authMechanism=SCRAM-SHA-256"
    tei = start(
        [
            "-m",
            "embedder.cli",
            "serve",
            "--backend",
            "hash",
            "--dimension",
            "32",
            "--port",
            "0",
            "--api-key",
            TEI_SECRET,
        ],
        tmp_path / "tei.log",
    )
    try:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
        queue = await seed(client, "secure", corpora.tweets(60))
        ws = Workspace("", "secure", tmp_path)
        metrics_port = free_port()
        env = {**os.environ, "EMBEDDER_MONGO_URI": uri, "EMBEDDER_TEI_API_KEY": TEI_SECRET}
        args = _without(ws.args([tei.address], "--metrics-port", str(metrics_port)), "--mongo-uri")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        metrics = await _scrape_when_embedded(metrics_port)
        proc.terminate()
        output = (await proc.communicate())[0].decode()
        assert proc.returncode == 0, output

        # A wrong key and a wrong password fail with errors that do not repeat them either.
        wrong = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            "--once",
            cwd=ROOT,
            env={**env, "EMBEDDER_TEI_API_KEY": "wrong-" + TEI_SECRET},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        wrong_output = (await wrong.communicate())[0].decode()
        assert wrong.returncode != 0 and "api-key" in wrong_output.lower()
        bad_uri = uri.replace(MONGO_SECRET, "x" + MONGO_SECRET)
        denied = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            "--once",
            cwd=ROOT,
            env={**env, "EMBEDDER_MONGO_URI": bad_uri},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        denied_output = (await denied.communicate())[0].decode()
        assert denied.returncode != 0 and "app:***@" in denied_output

        control = await client["secure"]["embedder_control"].find_one({"_id": queue.key})
        marks = [d async for d in client["secure"]["tweets"].find({}, {"gemma_embedded_768": 1})]
        await client.close()
    finally:
        tei.stop()
        db.stop()
    shard_bytes = b"".join(p.read_bytes() for p in ws.shards.glob("*.parquet"))
    assert shard_bytes, "the run should have written shards"
    everything = "\n".join(
        [output, wrong_output, denied_output, metrics, ws.summary_text(), str(control), str(marks)]
    )
    for secret in (MONGO_SECRET, TEI_SECRET):
        assert secret not in everything
        assert secret.encode() not in shard_bytes


def _without(args: list[str], option: str) -> list[str]:
    i = args.index(option)
    return args[:i] + args[i + 2 :]


async def _scrape_when_embedded(port: int) -> str:
    async with httpx.AsyncClient() as http:
        for _ in range(400):
            try:
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            except httpx.HTTPError:
                text = ""
            embedded = [
                line.split()[-1]
                for line in text.splitlines()
                if line.startswith("embedder_docs_embedded_total ")
            ]
            if embedded and float(embedded[0]) > 0:
                return text
            await asyncio.sleep(0.05)
    raise AssertionError("the worker never reported its embedded docs on /metrics")


URL_SECRET = "url-token-never-shown"


async def test_credentials_in_a_tei_url_appear_nowhere(
    ws: Workspace, mongo: AsyncMongoClient[dict[str, Any]], tei_factory: Callable[..., FaultTei]
) -> None:
    """Issue 12 (case 7): ``http://user:token@host`` in --tei-urls, one endpoint answering,
    one refusing connections (so its URL is in errors and log lines)."""
    tei = tei_factory()
    await seed(mongo, ws.database, corpora.tweets(60))
    port = tei.url.rsplit(":", 1)[1]
    answering = f"http://embedder:{URL_SECRET}@127.0.0.1:{port}"
    closed = free_port()
    refusing = f"http://{URL_SECRET}@127.0.0.1:{closed}"  # a token as the user
    metrics_port = free_port()
    args = ws.args([answering, refusing], "--metrics-port", str(metrics_port))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    metrics = await _scrape_when_embedded(metrics_port)
    proc.terminate()
    output = (await proc.communicate())[0].decode()
    assert proc.returncode == 0, output

    endpoints = {
        line.split('endpoint="', 1)[1].split('"', 1)[0]
        for line in metrics.splitlines()
        if 'endpoint="' in line
    }
    assert endpoints == {f"http://127.0.0.1:{port}", f"http://127.0.0.1:{closed}"}
    assert f"127.0.0.1:{closed}" in output  # the refusing endpoint is named in the log
    everything = "\n".join([output, metrics, ws.summary_text()])
    assert URL_SECRET not in everything


def test_an_aws_session_token_in_the_mongodb_uri_never_reaches_an_error() -> None:
    """MONGODB-AWS carries its session token in authMechanismProperties
    (AWS_SESSION_TOKEN:<token>). redact_uri hides the password and parameters named
    password/secret/token=..., not this one: an unreachable server prints the token."""
    uri = (
        "mongodb://AKIAEXAMPLE:wJalrSECRET@127.0.0.1:1/?authMechanism=MONGODB-AWS"
        "&authSource=$external&authMechanismProperties=AWS_SESSION_TOKEN:SeSsIoNtOkEn123"
        "&serverSelectionTimeoutMS=300"
    )
    for command in ("status", "verify", "requeue"):
        extra = ["--consolidated-dir", "/nonexistent"] if command == "verify" else []
        if command == "requeue":
            extra = ["--changed-text"]
        result = run_python(
            [
                "-m",
                "embedder.cli",
                command,
                "--collection",
                "t",
                "--database",
                "d",
                "--mongo-uri",
                uri,
                *extra,
            ]
        )
        assert result.returncode != 0
        shown = result.stdout + result.stderr
        assert "wJalrSECRET" not in shown
        assert "SeSsIoNtOkEn123" not in shown, f"{command}: {shown[:300]}"

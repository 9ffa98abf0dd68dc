"""A run on a fleet of two kinds of server: TEI's ``/embed`` and a vLLM-like OpenAI endpoint
with base64 vectors, the TEI refusing load with 429s, ends exactly-once with the right vectors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient

from tests.support import corpus as corpora
from tests.support.servers import FaultTei, Process, start
from tests.support.worker import Workspace, assert_complete, marks, seed


@pytest.fixture
def vllm_like(tmp_path: Path) -> Iterator[Process]:
    process = start(
        ["-m", "tests.support.openai_server", "--port", "0", "--flavour", "vllm"],
        tmp_path / "vllm.log",
    )
    yield process
    process.stop()


async def test_a_fleet_of_tei_and_vllm_with_429s_embeds_every_doc_once(
    ws: Workspace,
    mongo: AsyncMongoClient[dict[str, Any]],
    tei_factory: Callable[..., FaultTei],
    vllm_like: Process,
) -> None:
    tei = tei_factory()
    corpus = corpora.tweets(150)
    queue = await seed(mongo, ws.database, corpus)
    tei.set_faults(fail_every=2, fail_status=429, after=1)  # the start-up probe gets through
    revision = _get(tei.url + "/info")["model_sha"]

    code = await asyncio.to_thread(
        ws.run,
        [tei.url, vllm_like.address],
        "--once",
        "--batch-size",
        "8",  # enough requests for both endpoints to see several
        "--truncate",  # vLLM refuses long inputs by default, TEI cuts them: say which
        "--model-revision",  # vLLM reports none: the TEI's is named
        revision,
    )

    assert code == 0, ws.log()
    assert tei.stats()["faults_injected"] >= 1
    served = _get(vllm_like.address + "/_stats")
    assert served["inputs"] > 0 and tei.stats()["inputs"] > 1, "an endpoint embedded nothing"
    assert_complete(ws.rows(), await marks(mongo, queue), corpus)  # vectors compared exactly
    assert ws.summary()["errors_by_kind"].get("overloaded", 0) >= 1


def _get(url: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(url, timeout=5).json()
    return answer

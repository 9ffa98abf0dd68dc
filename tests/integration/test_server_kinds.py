"""The fleet against each kind of server, on loopback: TEI (``fault_tei``, on ``/embed`` and on
its OpenAI route), and vLLM- and Infinity-like servers (``openai_server``) that answer as the
real ones do. The hash model behind all of them gives one text one vector everywhere."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from embedder.errors import ConfigurationError
from embedder.fleet.limits import AdaptiveSettings
from embedder.fleet.protocol import EmbedOptions, ServerKind, WireApi
from embedder.fleet.routing import Fleet, FleetSettings, RetryPolicy
from embedder.telemetry import Telemetry
from tests.support import corpus as corpora
from tests.support.servers import FaultTei, Process, start

TEXTS = [f"tweet number {n} about {'cats' if n % 2 else 'dogs'}" for n in range(40)]


class OpenAITestServer:
    def __init__(self, process: Process) -> None:
        self.process = process
        self.url = process.address

    def set_faults(self, **faults: Any) -> None:
        httpx.post(self.url + "/_faults", json=faults, timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(self.url + "/_stats", timeout=5).json()
        return answer

    def reset(self) -> None:
        httpx.post(self.url + "/_reset", timeout=5).raise_for_status()


def _server(tmp: Path, *args: str) -> Process:
    return start(["-m", "tests.support.openai_server", "--port", "0", *args], tmp / "server.log")


def _serving(tmp: pytest.TempPathFactory, *args: str) -> Iterator[OpenAITestServer]:
    process = _server(tmp.mktemp("server"), *args)
    yield OpenAITestServer(process)
    process.stop()


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAITestServer]:
    yield from _serving(tmp_path_factory, "--flavour", "vllm", "--seconds-per-input", "0.001")


@pytest.fixture(scope="module")
def infinity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAITestServer]:
    yield from _serving(tmp_path_factory, "--flavour", "infinity", "--max-client-batch-size", "16")


@pytest.fixture
def servers(
    vllm: OpenAITestServer, infinity: OpenAITestServer, tei: FaultTei
) -> tuple[OpenAITestServer, OpenAITestServer, FaultTei]:
    vllm.reset()
    infinity.reset()
    return vllm, infinity, tei


def _settings(urls: list[str], tei: FaultTei, **kwargs: Any) -> FleetSettings:
    """vLLM and Infinity report no revision: the TEI's is named, as a user would."""
    revision = httpx.get(tei.url + "/info", timeout=5).json()["model_sha"]
    kwargs.setdefault("options", EmbedOptions(truncate=True))
    return FleetSettings(urls=tuple(urls), model_revision=revision, **kwargs)


async def test_each_kind_is_probed_and_all_answer_the_same_vectors(
    servers: tuple[OpenAITestServer, OpenAITestServer, FaultTei],
) -> None:
    vllm, infinity, tei = servers
    urls = [tei.url, "openai+" + tei.url, vllm.url, infinity.url]
    fleet = await Fleet.connect(_settings(urls, tei, concurrency=1), Telemetry())
    try:
        kinds = [(e.client.kind, e.client.wire.api) for e in fleet.endpoints]
        assert kinds == [
            (ServerKind.TEI, WireApi.TEI),
            (ServerKind.TEI, WireApi.OPENAI),
            (ServerKind.VLLM, WireApi.OPENAI),
            (ServerKind.INFINITY, WireApi.OPENAI),
        ]
        vllm_info = fleet.endpoints[2].info
        assert vllm_info is not None and vllm_info.version == "0.10.1"
        results = await asyncio.gather(*(fleet.embed(TEXTS[i::4]) for i in range(4)))
    finally:
        await fleet.close()
    for i, result in enumerate(results):
        assert not result.failures
        np.testing.assert_allclose(
            result.vectors, corpora.expected_vectors(TEXTS[i::4], 64), atol=1e-6
        )
    assert vllm.stats()["inputs"] > 0 and infinity.stats()["inputs"] > 0


@pytest.mark.parametrize(
    ("options", "why"),
    [
        (EmbedOptions(normalize=False), "always normalises"),
        (EmbedOptions(prompt_name="query"), "no prompt names"),
        (EmbedOptions(truncation_direction="Left"), "on the left"),
    ],
)
async def test_an_option_vllm_cannot_honour_is_refused_before_any_work(
    servers: tuple[OpenAITestServer, OpenAITestServer, FaultTei], options: EmbedOptions, why: str
) -> None:
    vllm, _, tei = servers
    with pytest.raises(ConfigurationError, match=why):
        await Fleet.connect(_settings([vllm.url], tei, options=options), Telemetry())
    assert vllm.stats()["requests"] == 0


async def test_servers_that_treat_long_inputs_differently_are_refused_unless_told(
    servers: tuple[OpenAITestServer, OpenAITestServer, FaultTei],
) -> None:
    vllm, infinity, tei = servers
    # TEI cuts (--auto-truncate), vLLM refuses: the vectors of long texts would differ.
    with pytest.raises(ConfigurationError, match=r"refused.*--truncate"):
        await Fleet.connect(
            _settings([tei.url, vllm.url], tei, options=EmbedOptions()), Telemetry()
        )
    # Infinity always cuts: it cannot be told to refuse.
    with pytest.raises(ConfigurationError, match="refuse over-long"):
        await Fleet.connect(
            _settings([infinity.url], tei, options=EmbedOptions(truncate=False)), Telemetry()
        )


async def test_vllms_over_long_input_fails_that_doc_alone(
    servers: tuple[OpenAITestServer, OpenAITestServer, FaultTei],
) -> None:
    vllm, _, tei = servers
    long = " ".join(["word"] * 600)  # over the 512 tokens of max_model_len
    fleet = await Fleet.connect(
        _settings([vllm.url], tei, options=EmbedOptions(truncate=False)), Telemetry()
    )
    try:
        result = await fleet.embed([*TEXTS[:5], long, *TEXTS[5:10]])
    finally:
        await fleet.close()
    assert list(result.failures) == [5] and "maximum context length" in result.failures[5]
    np.testing.assert_allclose(
        result.vectors[result.succeeded()], corpora.expected_vectors(TEXTS[:10], 64), atol=1e-6
    )


async def test_a_vllm_500_is_the_servers_fault_and_retried_not_the_docs(
    servers: tuple[OpenAITestServer, OpenAITestServer, FaultTei],
) -> None:
    vllm, _, tei = servers
    vllm.set_faults(fail_every=2, fail_status=500, after=1)
    telemetry = Telemetry()
    fleet = await Fleet.connect(_settings([vllm.url], tei, batch_size=8), telemetry)
    try:
        results = [await fleet.embed(TEXTS[i : i + 8]) for i in range(0, 24, 8)]
    finally:
        await fleet.close()
    assert vllm.stats()["faults_injected"] >= 2
    assert telemetry.summary.errors_by_kind["server_error"] >= 2
    for i, result in zip(range(0, 24, 8), results, strict=True):
        assert not result.failures
        np.testing.assert_allclose(
            result.vectors, corpora.expected_vectors(TEXTS[i : i + 8], 64), atol=1e-6
        )


async def test_infinitys_batch_limit_is_learnt_from_its_422(
    servers: tuple[OpenAITestServer, OpenAITestServer, FaultTei],
) -> None:
    _, infinity, tei = servers
    fleet = await Fleet.connect(_settings([infinity.url], tei, batch_size=32), Telemetry())
    try:
        result = await fleet.embed(TEXTS[:32])
        assert fleet.batch_size == 16
    finally:
        await fleet.close()
    assert not result.failures
    np.testing.assert_allclose(result.vectors, corpora.expected_vectors(TEXTS[:32], 64), atol=1e-6)


async def test_a_429_with_retry_after_is_honoured(
    servers: tuple[OpenAITestServer, OpenAITestServer, FaultTei],
) -> None:
    _, infinity, tei = servers
    infinity.set_faults(fail_every=2, fail_status=429, retry_after="1", after=1)
    fleet = await Fleet.connect(_settings([infinity.url], tei, batch_size=8), Telemetry())
    try:
        results = [await fleet.embed(TEXTS[i : i + 8]) for i in range(0, 24, 8)]
    finally:
        await fleet.close()
    stats = infinity.stats()
    assert stats["faults_injected"] >= 2
    assert stats["early"] == 0, "a request came back before the Retry-After had passed"
    for i, result in zip(range(0, 24, 8), results, strict=True):
        assert not result.failures
        np.testing.assert_allclose(
            result.vectors, corpora.expected_vectors(TEXTS[i : i + 8], 64), atol=1e-6
        )


async def _max_queue(server: OpenAITestServer, settings: FleetSettings) -> int:
    """The most inputs the server held at once while the fleet embedded 48 batches of 32,
    all offered at once (as a worker's embedders do)."""
    server.reset()
    fleet = await Fleet.connect(settings, Telemetry())
    try:
        texts = [f"queued text {i}" for i in range(48 * 32)]
        batches = [texts[i : i + 32] for i in range(0, len(texts), 32)]
        results = await asyncio.gather(*(fleet.embed(b) for b in batches))
    finally:
        await fleet.close()
    assert not any(r.failures for r in results)
    return int(server.stats()["max_queued_inputs"])


async def test_the_adaptive_limit_keeps_a_server_without_admission_control_short(
    servers: tuple[OpenAITestServer, OpenAITestServer, FaultTei],
) -> None:
    vllm, _, tei = servers
    # The server never refuses: with a fixed limit of 32 requests it holds all of them.
    fixed = await _max_queue(vllm, _settings([vllm.url], tei, concurrency=32))
    assert fixed >= 16 * 32
    adaptive = await _max_queue(
        vllm, _settings([vllm.url], tei, adaptive=AdaptiveSettings(), retry=RetryPolicy())
    )
    assert adaptive <= 4 * 32, f"the adaptive limit let {adaptive} inputs queue"


@pytest.fixture(scope="module")
def hosted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAITestServer]:
    yield from _serving(tmp_path_factory, "--flavour", "openai", "--api-key", "sk-test-key")


@pytest.mark.parametrize("base", ["/v1", ""])  # an OpenAI base URL, or the server's root
async def test_a_hosted_api_needs_its_model_named_and_its_key(
    hosted: OpenAITestServer, tei: FaultTei, base: str
) -> None:
    url = hosted.url + base
    plain = EmbedOptions()  # a hosted API refuses long inputs and cannot be told to cut them
    with pytest.raises(ConfigurationError, match="--openai-model"):
        await Fleet.connect(
            _settings([url], tei, api_key="sk-test-key", options=plain), Telemetry()
        )
    model = "embedder/hash-64"
    with pytest.raises(ConfigurationError, match="refused our credentials") as refused:
        await Fleet.connect(
            _settings([url], tei, api_key="wrong-key", openai_model=model, options=plain),
            Telemetry(),
        )
    assert "wrong-key" not in str(refused.value)
    settings = _settings([url], tei, api_key="sk-test-key", openai_model=model, options=plain)
    fleet = await Fleet.connect(settings, Telemetry())
    try:
        endpoint = fleet.endpoints[0]
        assert endpoint.client.kind is ServerKind.OPENAI
        assert await endpoint.client.healthy()  # no /health: its model listing answers
        result = await fleet.embed(TEXTS[:8])
    finally:
        await fleet.close()
    np.testing.assert_allclose(result.vectors, corpora.expected_vectors(TEXTS[:8], 64), atol=1e-6)

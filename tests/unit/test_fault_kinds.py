"""The fault table's consequences and how server answers map to fault kinds, without servers."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from embedder.errors import FaultKind
from embedder.fleet import tei_protocol as tei
from embedder.fleet.endpoint import EndpointClient
from embedder.identity import same_vector


def test_no_fault_of_a_server_ever_fails_a_doc_and_every_one_is_retried_elsewhere() -> None:
    for kind in FaultKind:
        means = kind.means
        assert means.endpoint_fault != means.fails_doc, kind  # one owner per kind
        if means.endpoint_fault:
            assert means.retried and not means.splits, kind
        else:
            assert not means.retried and means.splits, kind
        assert not (means.ejects_at_once and not means.counts_against_endpoint), kind
    assert {k for k in FaultKind if k.means.fails_doc} == {FaultKind.REJECTED, FaultKind.TOO_LARGE}


def test_what_each_server_fault_does_to_its_endpoint() -> None:
    against = {k for k in FaultKind if k.means.counts_against_endpoint}
    assert FaultKind.BACKEND in against and FaultKind.GARBAGE in against  # issue 12, case 2
    assert FaultKind.OVERLOADED not in against  # busy is not sick: it only shrinks the limit
    assert {k for k in FaultKind if k.means.shrinks_limit} == {
        FaultKind.OVERLOADED,
        FaultKind.TIMEOUT,
    }
    assert {k for k in FaultKind if k.means.ejects_at_once} == {
        FaultKind.WRONG_DIMENSION,
        FaultKind.WRONG_MODEL,
    }


def test_faults_one_input_can_cause_are_narrowed_before_they_count_against_the_endpoint() -> None:
    narrowing = {k for k in FaultKind if k.means.narrows_first}
    assert narrowing == {FaultKind.BACKEND, FaultKind.GARBAGE}  # review finding 13
    for kind in narrowing:
        # When the probe text fails too, they are the endpoint's fault as any other.
        means = kind.means
        assert means.endpoint_fault and means.retried and means.counts_against_endpoint, kind
        assert not means.ejects_at_once and not means.splits, kind


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (424, tei.encode_error(tei.ErrorType.BACKEND, "Backend error: out of memory"), "backend"),
        (429, tei.encode_error(tei.ErrorType.OVERLOADED, "Model is overloaded"), "overloaded"),
        (503, tei.encode_error(tei.ErrorType.UNHEALTHY, "unhealthy"), "unhealthy"),
        (500, b"Internal Server Error", "server_error"),
        (422, tei.encode_error(tei.ErrorType.VALIDATION, "Input validation error"), "rejected"),
        (422, tei.encode_error(tei.ErrorType.TOKENIZER, "tokenizer error"), "rejected"),
        (400, tei.encode_error(tei.ErrorType.EMPTY, "`inputs` cannot be empty"), "rejected"),
        (413, b"Failed to buffer the request body: length limit exceeded", "too_large"),
        (
            422,
            tei.encode_error(tei.ErrorType.VALIDATION, tei.batch_size_message(64, 32)),
            "too_large",
        ),
    ],
)
def test_tei_answers_map_to_their_fault_kind(status: int, body: bytes, kind: str) -> None:
    client = EndpointClient("http://127.0.0.1:1", httpx.AsyncClient())
    error = client._error(httpx.Response(status, content=body))
    assert error.kind == FaultKind(kind)
    assert error.means.endpoint_fault == (kind not in ("rejected", "too_large"))


def test_the_probe_vector_tells_another_model_from_rounding() -> None:
    rng = np.random.default_rng(0)
    vector = rng.standard_normal(64).astype(np.float32)
    assert same_vector(vector, vector.astype(np.float16).astype(np.float32))
    assert not same_vector(vector, rng.standard_normal(64).astype(np.float32))
    assert not same_vector(vector, vector[:32])

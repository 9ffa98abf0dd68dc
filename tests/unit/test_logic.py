"""Pure logic, no servers: claim planning, batching, ids, the wire format, text checks."""

from __future__ import annotations

import math
from typing import Any

import httpx
import numpy as np
import pytest
from bson import Int64, ObjectId
from hypothesis import given, settings
from hypothesis import strategies as st

from embedder.fleet import openai_protocol as openai
from embedder.fleet import tei_protocol as tei
from embedder.fleet.endpoint import EndpointClient
from embedder.fleet.limits import FixedInflightLimit
from embedder.fleet.routing import Endpoint, choose_endpoint
from embedder.ids import decode_id, encode_id, sort_key
from embedder.queue.connection import redact_uri, scrub
from embedder.queue.leases import Lease, plan_claim
from embedder.worker.batching import BatchLimits, estimate_tokens, halves, plan_batches
from embedder.worker.documents import Doc, Rejected, to_doc
from tests.support.openai_answers import decode_openai_response

LIMITS = BatchLimits(
    max_inputs=32, max_tokens=4096, max_bytes=200_000, max_input_tokens=512, truncating=True
)

texts = st.text(st.characters(codec="utf-8"), max_size=3000)
ids = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=20),
    st.binary(min_size=12, max_size=12).map(ObjectId),
)


@given(st.lists(texts, max_size=200), st.integers(1, 64), st.integers(8, 5000))
def test_batches_keep_every_doc_once_in_order_within_limits(
    items: list[str], max_inputs: int, budget: int
) -> None:
    limits = BatchLimits(max_inputs, budget, 50_000, 512, truncating=False)
    docs = [Doc(i, t) for i, t in enumerate(items)]
    batches = list(plan_batches(docs, limits))
    assert [d for b in batches for d in b] == docs
    for batch in batches:
        assert 1 <= len(batch) <= max_inputs
        if len(batch) > 1:
            assert sum(estimate_tokens(d.text, limits) for d in batch) <= budget


@given(st.lists(st.integers(), min_size=2, max_size=100), st.one_of(st.none(), st.integers(1, 50)))
def test_halves_split_without_loss(items: list[int], limit: int | None) -> None:
    parts = halves(items, limit)
    assert [x for p in parts for x in p] == items
    assert len(parts) >= 2 and all(parts)


@given(ids)
def test_ids_round_trip_through_parquet_encoding(value: Any) -> None:
    text, kind = encode_id(value)
    assert decode_id(text, kind) == value
    assert type(decode_id(text, kind)) is type(value)


def test_int64_and_bool_ids_keep_their_kind() -> None:
    assert encode_id(Int64(5)) == ("5", "int")
    assert decode_id(*encode_id(True)) is True


def test_sort_key_follows_bson_type_order() -> None:
    mixed = [ObjectId(), "b", 3, "a", 1.5, Int64(2)]
    ordered = sorted(mixed, key=sort_key)
    assert ordered[:3] == [1.5, Int64(2), 3]
    assert ordered[3:5] == ["a", "b"]
    assert isinstance(ordered[5], ObjectId)


@given(
    st.lists(st.integers(0, 500), min_size=1, max_size=80, unique=True).map(sorted),
    st.lists(st.tuples(st.integers(0, 500), st.integers(0, 40)), max_size=5),
)
def test_a_claim_never_covers_or_spans_a_lease(
    candidates: list[int], raw: list[tuple[int, int]]
) -> None:
    leases = [Lease(str(i), lo, lo + width, "other") for i, (lo, width) in enumerate(raw)]
    plan = plan_claim(candidates, leases)
    assert plan.ids == candidates[plan.start : plan.start + len(plan.ids)]
    if plan.ids:
        lo, hi = plan.ids[0], plan.ids[-1]
        for lease in leases:
            assert lease.hi < lo or lease.lo > hi, (plan, lease)
        assert plan.cursor == hi
    else:
        # Every candidate is leased: the cursor may jump past them, but only across ids
        # that some lease covers, so no claimable doc is ever skipped.
        assert plan.cursor >= candidates[-1]
        assert all(
            any(le.covers(x) for le in leases) for x in range(candidates[-1] + 1, plan.cursor + 1)
        )
    # Every candidate skipped before the run is inside a lease.
    assert all(any(le.covers(c) for le in leases) for c in candidates[: plan.start])


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"_id": 1}, "missing text"),
        ({"_id": 1, "text": None}, "missing text"),
        ({"_id": 1, "text": 5}, "not a string"),
        ({"_id": 1, "text": ["a"]}, "not a string"),
        ({"_id": 1, "text": " \n\t"}, "is empty"),
        ({"_id": 1, "text": "bad \ud800 surrogate"}, "not valid Unicode"),
    ],
)
def test_unembeddable_docs_are_rejected_with_a_reason(raw: dict[str, Any], reason: str) -> None:
    result = to_doc(raw, "text")
    assert isinstance(result, Rejected) and reason in result.reason


# Every code point, lone surrogates and control characters included.
any_text = st.text(st.characters(exclude_categories=()), max_size=3000)


@given(any_text)
def test_any_text_is_either_a_doc_or_rejected(text: str) -> None:
    result = to_doc({"_id": 1, "a": {"b": text}}, "a.b")
    if isinstance(result, Doc):
        assert result.text == text and text.strip()
        assert result.size == len(text.encode("utf-8"))  # what goes on the wire is valid UTF-8
    else:
        assert not text.strip() or "Unicode" in result.reason


def test_embed_answers_are_checked_before_use() -> None:
    good = tei.encode_embed_response(np.ones((2, 3), np.float32))
    assert tei.decode_embed_response(good, 2).shape == (2, 3)
    for raw, count in [
        (b"<html>", 2),
        (b'{"a": 1}', 1),
        (b"[[1.0, 2.0]]", 2),
        (b"[[1.0, 2.0], [1.0]]", 2),
        (b"[[NaN, 1.0]]", 1),
        (b'[["x", 1.0]]', 1),
        (b"[[]]", 1),
        (b"[[1.0, 2.0], [1.0, 2.0", 2),
        (b"[[[1.0]]]", 1),
        (b"[[1.0, null]]", 1),
        (b"[[Infinity, 1.0]]", 1),
        (b"[[1e400, 1.0]]", 1),
        (b"[[1, 2, 3], [4]]", 2),
    ]:
        with pytest.raises(tei.ProtocolError):
            tei.decode_embed_response(raw, count)


def test_openai_base64_round_trips() -> None:
    vectors = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    raw = openai.encode_response(vectors, model="m", encoding_format="base64", prompt_tokens=7)
    np.testing.assert_array_equal(decode_openai_response(raw, 3), vectors)


def test_error_answers_are_read_in_tei_and_plain_forms() -> None:
    answer = tei.decode_error(
        422, tei.encode_error(tei.ErrorType.VALIDATION, tei.batch_size_message(64, 32))
    )
    assert answer.error_type == "Validation" and tei.parse_batch_limit(answer.message) == 32
    plain = tei.decode_error(413, b"Failed to buffer the request body: length limit exceeded")
    assert plain.error_type is None and "length limit" in plain.message
    assert [e.status for e in tei.ErrorType] == [422, 422, 400, 429, 424, 503]


def test_info_requires_the_fields_clients_act_on() -> None:
    with pytest.raises(tei.ProtocolError):
        tei.Info.from_json({"model_id": "x"})


@pytest.mark.parametrize(
    ("uri", "visible", "hidden"),
    [
        ("mongodb://app:s3cr3t@db:27017/x", "mongodb://app:***@db:27017/x", "s3cr3t"),
        ("mongodb+srv://app:p%40ss@cluster.example/x?tls=true", "mongodb+srv://app:***@", "p%40ss"),
        ("mongodb://db/?authMechanism=PLAIN&password=hush", "password=***", "hush"),
    ],
)
def test_uris_are_redacted(uri: str, visible: str, hidden: str) -> None:
    assert visible in redact_uri(uri) and hidden not in redact_uri(uri)
    assert hidden not in scrub(f"failed to reach {uri}: timeout", None)


def test_token_estimate_is_capped_when_the_server_truncates() -> None:
    assert estimate_tokens("x " * 100_000, LIMITS) == 512
    assert math.isclose(estimate_tokens("abcd" * 10, LIMITS), 12)


endpoint_states = st.lists(
    # up, the inputs of each request in flight, the limit
    st.tuples(st.booleans(), st.lists(st.integers(1, 64), max_size=20), st.integers(1, 256)),
    min_size=1,
    max_size=6,
)


# Routing never sends a request: one client, never used, serves every example.
_NO_HTTP = httpx.AsyncClient()


@given(endpoint_states, st.integers(1, 64), st.sets(st.integers(0, 5)))
@settings(max_examples=300)
def test_routing_picks_the_least_loaded_healthy_endpoint_with_room(
    states: list[tuple[bool, list[int], int]], inputs: int, avoided: set[int]
) -> None:
    endpoints = [
        Endpoint(
            EndpointClient(f"http://e{i}", _NO_HTTP),
            limit=FixedInflightLimit(limit),
            sent=[(0.0, size) for size in requests],
            up=up,
        )
        for i, (up, requests, limit) in enumerate(states)
    ]
    avoid = {f"http://e{i}" for i in avoided}
    chosen = choose_endpoint(endpoints, inputs, avoid, now=0.0)

    # The rule, from the generated states alone: an endpoint is ready when it is up and has
    # nothing in flight or room for these inputs under its limit (a fixed limit does not
    # pace); among the ready ones not avoided (or all ready ones, if every one is avoided),
    # the fewest requests in flight, then the fewest inputs.
    ready = [
        i
        for i, (up, requests, limit) in enumerate(states)
        if up and (not requests or sum(requests) + inputs <= max(1, limit))
    ]
    if not ready:
        assert chosen is None
        return
    pool = [i for i in ready if i not in avoided] or ready
    fewest = min((len(states[i][1]), sum(states[i][1])) for i in pool)
    expected = {i for i in pool if (len(states[i][1]), sum(states[i][1])) == fewest}
    assert chosen is not None
    assert next(i for i, e in enumerate(endpoints) if e is chosen) in expected

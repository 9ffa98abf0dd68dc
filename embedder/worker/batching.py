"""Cutting documents into requests that fit an endpoint's limits. Pure functions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from embedder.worker.documents import Doc, FailureCause, Rejected

# JSON framing per input: quotes, comma, and room for escapes of a few control characters.
_PER_INPUT_OVERHEAD = 16
_BODY_OVERHEAD = 128


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """What one request to an endpoint may hold (the server's limits, with headroom)."""

    max_inputs: int  # the server's max_client_batch_size, or less by choice
    max_tokens: int  # a soft budget per request, from max_batch_tokens
    max_bytes: int  # the server's payload limit, with headroom
    max_input_tokens: int  # the server's max_input_length
    truncating: bool  # whether the server truncates long inputs

    def __post_init__(self) -> None:
        if min(self.max_inputs, self.max_tokens, self.max_bytes, self.max_input_tokens) < 1:
            raise ValueError(f"batch limits must be positive: {self}")


def estimate_tokens(text: str, limits: BatchLimits) -> int:
    """A cheap upper-leaning guess (about 4 characters a token) without a tokenizer."""
    guess = len(text) // 4 + 2
    return min(guess, limits.max_input_tokens) if limits.truncating else guess


def encoded_size(doc: Doc) -> int:
    return (doc.size or len(doc.text.encode("utf-8"))) + _PER_INPUT_OVERHEAD


def oversized(doc: Doc, limits: BatchLimits) -> Rejected | None:
    size = encoded_size(doc) + _BODY_OVERHEAD
    if size > limits.max_bytes:
        return Rejected(
            doc.id,
            f"text is {size} bytes, over the endpoint's payload limit of {limits.max_bytes}",
            FailureCause.TOO_LARGE,
        )
    return None


def plan_batches(docs: Sequence[Doc], limits: BatchLimits) -> Iterator[list[Doc]]:
    """Greedy, order-preserving: a batch closes when the next doc would break a limit.

    Every doc lands in exactly one batch; a doc that alone exceeds the token budget gets a
    batch of its own (the server decides about it), so nothing is dropped here.
    """
    batch: list[Doc] = []
    tokens = 0
    size = _BODY_OVERHEAD
    for doc in docs:
        doc_tokens = estimate_tokens(doc.text, limits)
        doc_size = encoded_size(doc)
        if batch and (
            len(batch) >= limits.max_inputs
            or tokens + doc_tokens > limits.max_tokens
            or size + doc_size > limits.max_bytes
        ):
            yield batch
            batch, tokens, size = [], 0, _BODY_OVERHEAD
        batch.append(doc)
        tokens += doc_tokens
        size += doc_size
    if batch:
        yield batch


def halves[T](items: Sequence[T], limit: int | None = None) -> list[Sequence[T]]:
    """Split a refused batch: into chunks of the server's stated limit, else in two."""
    if limit is not None and 0 < limit < len(items):
        return [items[i : i + limit] for i in range(0, len(items), limit)]
    middle = max(1, len(items) // 2)
    return [items[:middle], items[middle:]]

"""The MongoDB retry policy (queue/retry.py): which errors are waited out, for how long.

The operations are plain async callables raising pymongo's own errors: the policy is the
unit under test, not MongoDB.
"""

from __future__ import annotations

import logging

import pytest
from pymongo.errors import AutoReconnect, DuplicateKeyError, NetworkTimeout, OperationFailure

from embedder.errors import QueueError
from embedder.queue.retry import MongoRetry, transient

FAST = {"first_backoff_s": 0.001, "max_backoff_s": 0.005}


class Flaky:
    """Raises ``errors`` in turn, then answers ``"done"``; counts its calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def labelled(label: str) -> OperationFailure:
    error = OperationFailure("write conflict", code=112)
    error._add_error_label(label)
    return error


def test_connection_trouble_and_labelled_errors_are_transient_others_are_not() -> None:
    assert transient(AutoReconnect("primary stepped down"))
    assert transient(NetworkTimeout("timed out"))
    assert transient(labelled("RetryableWriteError"))
    assert transient(labelled("TransientTransactionError"))
    assert not transient(OperationFailure("unauthorized", code=13))
    assert not transient(DuplicateKeyError("E11000"))
    assert not transient(ValueError("not MongoDB's"))


async def test_an_outage_shorter_than_the_bound_is_waited_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    operation = Flaky(AutoReconnect("down"), AutoReconnect("down"), labelled("RetryableWriteError"))
    retry = MongoRetry(30, **FAST)

    with caplog.at_level(logging.WARNING, "embedder.queue.retry"):
        assert await retry("claiming", operation) == "done"

    assert operation.calls == 4
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 1  # one warning per outage, not per try
    assert any("reachable again" in m for m in messages)


async def test_an_outage_past_the_bound_is_a_queue_error_naming_what_was_being_done() -> None:
    operation = Flaky(*[AutoReconnect("connection refused")] * 10_000)

    with pytest.raises(QueueError, match="unreachable for more than 0s while marking") as raised:
        await MongoRetry(0.05, **FAST)("marking", operation)

    assert isinstance(raised.value.__cause__, AutoReconnect)
    assert operation.calls > 1


async def test_a_permanent_error_is_not_retried() -> None:
    operation = Flaky(OperationFailure("not authorized on tweets", code=13))

    with pytest.raises(QueueError, match="releasing failed: not authorized"):
        await MongoRetry(30, **FAST)("releasing", operation)

    assert operation.calls == 1


async def test_an_error_that_is_not_mongodbs_passes_through_untouched() -> None:
    with pytest.raises(ZeroDivisionError):
        await MongoRetry(30, **FAST)("counting", Flaky(ZeroDivisionError()))

"""Why a doc fails for good (worker/documents.py's FailureCause), without servers."""

from __future__ import annotations

from typing import Any

import pytest

from embedder.worker.documents import Doc, FailureCause, Rejected, to_doc


@pytest.mark.parametrize(
    ("document", "cause", "reason"),
    [
        ({"_id": 1}, FailureCause.MISSING_FIELD, "missing text field 'text'"),
        ({"_id": 2, "text": None}, FailureCause.MISSING_FIELD, "missing text field"),
        ({"_id": 3, "text": 42}, FailureCause.NOT_A_STRING, "is int, not a string"),
        ({"_id": 4, "text": ["a"]}, FailureCause.NOT_A_STRING, "is list, not a string"),
        ({"_id": 5, "text": " \n\t"}, FailureCause.EMPTY, "is empty"),
        ({"_id": 6, "text": "caf\udcc3"}, FailureCause.INVALID_UNICODE, "not valid Unicode"),
    ],
)
def test_each_unembeddable_doc_gets_its_cause_and_a_reason_naming_the_field(
    document: dict[str, Any], cause: FailureCause, reason: str
) -> None:
    rejected = to_doc(document, "text")
    assert isinstance(rejected, Rejected)
    assert (rejected.id, rejected.cause) == (document["_id"], cause)
    assert reason in rejected.reason


def test_a_dotted_field_missing_on_the_way_is_a_missing_field() -> None:
    rejected = to_doc({"_id": 1, "extended": {"other": "x"}}, "extended.full_text")
    assert isinstance(rejected, Rejected) and rejected.cause is FailureCause.MISSING_FIELD
    assert isinstance(to_doc({"_id": 2, "extended": {"full_text": "x"}}, "extended.full_text"), Doc)


def test_a_rejection_by_the_server_is_the_default_cause() -> None:
    assert Rejected(1, "refused").cause is FailureCause.REJECTED_BY_SERVER


def test_only_causes_about_the_field_itself_point_at_the_settings() -> None:
    assert {c for c in FailureCause if c.points_at_settings} == {
        FailureCause.MISSING_FIELD,
        FailureCause.NOT_A_STRING,
    }


def test_every_cause_is_a_distinct_metric_label() -> None:
    labels = [str(c) for c in FailureCause]
    assert len(set(labels)) == len(labels)
    assert all(label.isidentifier() and label.islower() for label in labels)

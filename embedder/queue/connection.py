"""Connecting to MongoDB, checking the queue's indexes, creating them; URIs never leak."""

from __future__ import annotations

import re
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure, PyMongoError

from embedder.errors import ConfigurationError
from embedder.queue.marks import is_mark
from embedder.queue.spec import QueueSpec

_USERINFO = re.compile(r"(?P<scheme>mongodb(?:\+srv)?://)(?P<userinfo>[^@/]*)@")
_SECRET_PARAMS = re.compile(r"(?i)((?:password|tlsCertificateKeyFilePassword|secret|token)=)[^&]*")


def redact_uri(uri: str) -> str:
    """The URI with its password and secret parameters replaced, safe for logs and errors."""
    return _SECRET_PARAMS.sub(r"\1***", _USERINFO.sub(_hide_password, uri))


def _hide_password(match: re.Match[str]) -> str:
    user = match.group("userinfo").split(":", 1)[0]
    return f"{match.group('scheme')}{user}:***@"


def scrub(message: str, *secrets: str | None) -> str:
    """A message with every URI in it redacted and every given secret removed."""
    text = redact_uri(message)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def connect(uri: str, **options: Any) -> AsyncMongoClient[dict[str, Any]]:
    """A client for ``uri``; TLS and auth options in the URI or ``options`` go to pymongo as-is."""
    if "serverselectiontimeoutms" not in uri.lower():
        # pymongo lets keyword options override the URI's, so defaults only fill gaps.
        options.setdefault("serverSelectionTimeoutMS", 15_000)
    return AsyncMongoClient(uri, tz_aware=True, appname="embedder", **options)


async def check_reachable(client: AsyncMongoClient[dict[str, Any]], uri: str) -> None:
    try:
        await client.admin.command("ping")
    except PyMongoError as exc:
        raise ConfigurationError(
            f"MongoDB at {redact_uri(uri)} is not reachable: {scrub(str(exc))}"
        ) from exc


def collection(
    client: AsyncMongoClient[dict[str, Any]], spec: QueueSpec
) -> AsyncCollection[dict[str, Any]]:
    return client[spec.database][spec.collection]


async def ensure_indexes(client: AsyncMongoClient[dict[str, Any]], spec: QueueSpec) -> list[str]:
    """Create the work-queue and monitoring indexes; a no-op when they already exist."""
    docs = collection(client, spec)
    try:
        queue = await docs.create_index(
            spec.index_keys, name=spec.index_name, partialFilterExpression=spec.partial_filter
        )
        done = await docs.create_index(
            [(spec.status_path, 1)], name=spec.done_index_name, sparse=True
        )
    except OperationFailure as exc:
        raise ConfigurationError(
            f"an index named like ours exists with another definition on {spec.collection}: "
            f"{exc.details.get('errmsg') if exc.details else exc}; drop it or choose another target field"
        ) from exc
    return [queue, done]


async def check_target_field(client: AsyncMongoClient[dict[str, Any]], spec: QueueSpec) -> None:
    """Refuse a target field that already holds values embedder did not write (the seed's
    ``true``, say): such docs would look done to the queue and unknown to status and verify.

    A random sample, not a scan: cheap on any collection size.
    """
    pipeline: list[dict[str, Any]] = [
        {"$sample": {"size": 1000}},
        {"$match": {spec.target_field: {"$exists": True}}},
        {"$project": {spec.target_field: 1}},
        {"$limit": 50},
    ]
    try:
        sample = await (await collection(client, spec).aggregate(pipeline)).to_list()
    except PyMongoError as exc:
        raise ConfigurationError(f"cannot sample {spec.collection}: {scrub(str(exc))}") from exc
    for doc in sample:
        value = doc.get(spec.target_field)
        if not is_mark(value):
            raise ConfigurationError(
                f"the target field {spec.target_field!r} of {spec.collection} already holds values embedder "
                f"did not write (doc {doc['_id']!r}: {type(value).__name__} {str(value)[:40]}); choose another "
                "--target-field, or clear it (`$unset`) on the docs that should be embedded"
            )


async def check_indexes(client: AsyncMongoClient[dict[str, Any]], spec: QueueSpec) -> None:
    """Refuse to start without the work-queue index: every queue query would scan."""
    try:
        info = await collection(client, spec).index_information()
    except PyMongoError as exc:
        raise ConfigurationError(
            f"cannot list indexes of {spec.collection}: {scrub(str(exc))}"
        ) from exc
    index = info.get(spec.index_name)
    hint = (
        f"create it with `embedder indexes --collection {spec.collection} --target-field {spec.target_field}` "
        f"or `mongosh --eval 'var collection=\"{spec.collection}\"' mongo/indexes.js`"
    )
    if index is None:
        raise ConfigurationError(
            f"the work-queue index {spec.index_name!r} is missing on {spec.collection}; {hint}"
        )
    expected_keys = [(name, 1) for name, _ in spec.index_keys]
    keys = [(name, int(direction)) for name, direction in index["key"]]
    partial = dict(index.get("partialFilterExpression") or {})
    if keys != expected_keys or partial != spec.partial_filter:
        raise ConfigurationError(
            f"index {spec.index_name!r} on {spec.collection} does not serve this queue "
            f"(keys {keys}, partial filter {partial}; expected {expected_keys}, {spec.partial_filter}); {hint}"
        )

"""Connecting to MongoDB, checking the queue's indexes, creating them; URIs never leak."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure, PyMongoError

from embedder.errors import ConfigurationError
from embedder.queue.marks import is_mark
from embedder.queue.spec import QueueSpec

_USERINFO = re.compile(r"(?P<scheme>mongodb(?:\+srv)?://)(?P<userinfo>[^@/\s]*)@")
# The URI options that carry a credential (pymongo's URI options: the client certificate's
# key password), and any option named like one; a value ends at the next option or the end
# of the URI as printed.
_SECRET_PARAMS = re.compile(
    r"(?i)((?:password|tlsCertificateKeyFilePassword|passphrase|secret|token)=)[^&\s'\"#]*"
)
# authMechanismProperties=KEY:VALUE,KEY:VALUE: MONGODB-AWS puts its session token there
# (AWS_SESSION_TOKEN:<token>), and other mechanisms may put secrets there too. Every value is
# hidden, the keys are kept: they say which mechanism is configured.
_MECHANISM_PROPERTIES = re.compile(r"(?i)(authMechanismProperties=)([^&\s'\"#]*)")
_PROPERTY_VALUE = re.compile(r"(?P<key>[^:,]*):[^,]*")
# Properties that name things rather than prove them (as pymongo's repr treats them): their
# values, often short ("aws", "mongodb"), are not hunted for outside the URI.
_NAMING_PROPERTIES = frozenset(
    {"ALLOWED_HOSTS", "CANONICALIZE_HOST_NAME", "ENVIRONMENT", "SERVICE_HOST", "SERVICE_NAME"}
    | {"SERVICE_REALM", "TOKEN_RESOURCE"}
)


def redact_uri(text: str) -> str:
    """``text`` with every credential of each MongoDB URI in it replaced (the password of
    its userinfo, authMechanismProperties' values, password/secret/token options), safe for
    logs and errors. The one place that knows what a MongoDB URI can hold."""
    text = _USERINFO.sub(_hide_password, text)
    text = _MECHANISM_PROPERTIES.sub(_hide_properties, text)
    return _SECRET_PARAMS.sub(r"\1***", text)


def _hide_password(match: re.Match[str]) -> str:
    user = match.group("userinfo").split(":", 1)[0]
    return f"{match.group('scheme')}{user}:***@"


def _hide_properties(match: re.Match[str]) -> str:
    hidden = _PROPERTY_VALUE.sub(r"\g<key>:***", match.group(2))
    return match.group(1) + hidden


def uri_credentials(uri: str) -> list[str]:
    """The credentials ``uri`` carries, as written and percent-decoded: a driver's error may
    quote one without the URI around it."""
    parts = urlsplit(uri)
    found: list[str] = []
    if parts.password:
        found.append(parts.password)
    for name, value in parse_qsl(parts.query):
        if name.lower() == "authmechanismproperties":
            pairs = (p.partition(":") for p in value.split(","))
            found += [v for k, _, v in pairs if k.upper() not in _NAMING_PROPERTIES]
        elif _SECRET_PARAMS.search(f"{name}="):
            found.append(value)
    raw = [c for c in found if c]
    return sorted({*raw, *(quote(c, safe="") for c in raw), *(unquote(c) for c in raw)})


def scrub(message: str, *secrets: str | None) -> str:
    """A message with every URI in it redacted and every given secret removed; a MongoDB URI
    given as a secret has each of its credentials removed too, wherever it appears."""
    text = redact_uri(message)
    for secret in secrets:
        if not secret:
            continue
        hidden = [secret]
        if secret.startswith(("mongodb://", "mongodb+srv://")):
            hidden += uri_credentials(secret)
        for value in sorted(set(hidden), key=len, reverse=True):
            text = text.replace(value, "***")
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

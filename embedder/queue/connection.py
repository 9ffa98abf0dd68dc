"""Connecting to MongoDB, checking the queue's indexes, creating them; URIs never leak."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure, PyMongoError

from embedder.errors import ConfigurationError
from embedder.queue.marks import is_mark
from embedder.queue.spec import QueueSpec

# Up to the last "@" before the hosts: a password with an unescaped "@" (a URI pymongo
# refuses) is hidden whole, not shown from its "@" on.
_USERINFO = re.compile(r"(?P<scheme>mongodb(?:\+srv)?://)(?P<userinfo>[^/\s]*)@")
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


# The characters a key or password is made of: a secret is hidden where it stands as a whole
# token, so a short key ("1") does not hide every "1" of a message (a port, an address).
_TOKEN_CHARS = r"A-Za-z0-9_\-.~+"


def scrub(message: str, *secrets: str | None) -> str:
    """A message with every URI in it redacted and every given secret removed where it stands
    as a whole token; a MongoDB URI given as a secret has each of its credentials removed,
    wherever they appear (the URI itself is shown redacted, host and all)."""
    text = redact_uri(message)
    for secret in secrets:
        if not secret:
            continue
        is_uri = secret.startswith(("mongodb://", "mongodb+srv://"))
        hidden = uri_credentials(secret) if is_uri else [secret]
        for value in sorted(set(hidden), key=len, reverse=True):
            token = rf"(?<![{_TOKEN_CHARS}]){re.escape(value)}(?![{_TOKEN_CHARS}])"
            text = re.sub(token, "***", text)
    return text


def connect(uri: str, **options: Any) -> AsyncMongoClient[dict[str, Any]]:
    """A client for ``uri``; TLS and auth options in the URI or ``options`` go to pymongo as-is."""
    if "serverselectiontimeoutms" not in uri.lower():
        # pymongo lets keyword options override the URI's, so defaults only fill gaps.
        options.setdefault("serverSelectionTimeoutMS", 15_000)
    try:
        return AsyncMongoClient(uri, tz_aware=True, appname="embedder", **options)
    except (PyMongoError, ValueError, OSError) as exc:  # pymongo parses the URI here
        raise ConfigurationError(uri_problem(uri, exc)) from None


async def check_reachable(client: AsyncMongoClient[dict[str, Any]], uri: str) -> None:
    try:
        await client.admin.command("ping")
    except OperationFailure as exc:
        if exc.code != _AUTHENTICATION_FAILED:
            raise ConfigurationError(
                f"MongoDB at {redact_uri(uri)} refused a ping: {scrub(str(exc), uri)}"
            ) from None
        raise ConfigurationError(
            f"MongoDB at {redact_uri(uri)} refused the credentials (authentication failed); "
            "check the user name, password and authSource in --mongo-uri"
        ) from None
    except PyMongoError as exc:
        raise ConfigurationError(
            f"MongoDB at {redact_uri(uri)} is not reachable ({unreachable_cause(exc)}); check "
            "that it is running and that --mongo-uri names its host and port"
        ) from None


_AUTHENTICATION_FAILED = 18
# What a driver's connection error says, and the few words a person needs; the first match
# wins (a server-selection error also says "Timeout: 15s" whatever the cause).
_CAUSES = (
    (("Connection refused", "Errno 111", "Connect call failed"), "connection refused"),
    (
        (
            "Name or service not known",
            "nodename nor servname",
            "Temporary failure in name resolution",
            "getaddrinfo failed",
            "No address associated",
            "DNS query name does not exist",
        ),
        "name not resolved",
    ),
    (("CERTIFICATE_VERIFY_FAILED", "SSL", "TLS"), "TLS handshake failed"),
    (("Network is unreachable", "No route to host"), "network unreachable"),
    (("Connection reset",), "connection reset"),
    (("timed out", "Timeout"), "timed out"),
)


def unreachable_cause(exc: BaseException) -> str:
    """Why a MongoDB could not be reached, in a few words ("connection refused")."""
    text = str(exc)
    for needles, cause in _CAUSES:
        if any(needle in text for needle in needles):
            return cause
    return scrub(text.split(",", maxsplit=1)[0])[:120]


_TLS_FILE_OPTIONS = ("tlsCAFile", "tlsCertificateKeyFile", "tlsCRLFile")


def uri_problem(uri: str, exc: BaseException) -> str:
    """What is wrong with a MongoDB URI pymongo refused, naming the part and the fix; the
    URI itself is not repeated (a malformed one may not redact cleanly)."""
    text = str(exc)
    scheme = urlsplit(uri).scheme if "://" in uri else ""
    if not uri.startswith(("mongodb://", "mongodb+srv://")):
        given = f"not {scheme}://" if scheme else "no scheme"
        return f"--mongo-uri must start with mongodb:// or mongodb+srv:// ({given})"
    if isinstance(exc, ValueError) and "port" in text.lower():
        return (
            "--mongo-uri: the port is not a number from 1 to 65535 (host:port, such as "
            "localhost:27017); a ':' or '@' in the password must be percent-escaped"
        )
    if "must be escaped" in text:
        return (
            "--mongo-uri: the user name or password holds a character that must be "
            "percent-escaped (@ : / ? # [ ] %); write @ as %40 (urllib.parse.quote_plus)"
        )
    if isinstance(exc, OSError) and exc.filename:
        named = [
            name
            for name, value in parse_qsl(urlsplit(uri).query)
            if name in _TLS_FILE_OPTIONS and value == exc.filename
        ]
        option = named[0] if named else "a file option"
        why = exc.strerror or "cannot be read"
        return f"--mongo-uri: {option} {exc.filename}: {why}; give a file that exists"
    if "DNS" in text or "resolve" in text:
        return f"--mongo-uri: the mongodb+srv:// host was not resolved ({scrub(text, uri)})"
    return f"--mongo-uri is not a usable MongoDB URI: {scrub(text, uri)}"


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


async def check_indexes(
    client: AsyncMongoClient[dict[str, Any]], spec: QueueSpec, uri: str | None = None
) -> None:
    """Refuse to start without the work-queue index: every queue query would scan. The
    error's hint is the `embedder indexes` command to run, with ``uri`` where it is needed."""
    try:
        info = await collection(client, spec).index_information()
    except PyMongoError as exc:
        raise ConfigurationError(
            f"cannot list indexes of {spec.collection}: {scrub(str(exc))}"
        ) from exc
    from embedder.queue.diagnosis import indexes_command, missing_collection  # it uses ours

    index = info.get(spec.index_name)
    command = indexes_command(spec, uri)
    hint = f"create it with: {command}"
    if index is None:
        missing = await missing_collection(client, spec)
        if missing is not None:
            raise ConfigurationError(
                f"{missing}; check --database and --collection (to fill it later, create its "
                f"indexes first: {command})"
            )
        raise ConfigurationError(
            f"the work-queue index {spec.index_name!r} is missing on "
            f"{spec.database}.{spec.collection}; {hint}"
        )
    expected_keys = [(name, 1) for name, _ in spec.index_keys]
    keys = [(name, int(direction)) for name, direction in index["key"]]
    partial = dict(index.get("partialFilterExpression") or {})
    if keys != expected_keys or partial != spec.partial_filter:
        raise ConfigurationError(
            f"index {spec.index_name!r} on {spec.collection} does not serve this queue "
            f"(keys {keys}, partial filter {partial}; expected {expected_keys}, {spec.partial_filter}): "
            "give the --filter and --exclude it was made for, or drop it "
            f"(db.getCollection({json.dumps(spec.collection)}).dropIndex({json.dumps(spec.index_name)})) "
            f"and {hint}"
        )

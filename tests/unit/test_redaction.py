"""Credentials are redacted from text and from endpoint names, without servers."""

from __future__ import annotations

import httpx
import pytest

from embedder.fleet.endpoint import address
from embedder.logs import redact


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "GET http://user:s3cret@gpu1:18080/embed failed",
            "GET http://user:***@gpu1:18080/embed failed",
        ),
        ("https://tok3n@gpu2/embed", "https://***@gpu2/embed"),
        ("mongodb://app:pw@db1,db2/?replicaSet=rs0", "mongodb://app:***@db1,db2/?replicaSet=rs0"),
        ("no url here: a@b", "no url here: a@b"),
    ],
)
def test_redact_hides_the_credentials_of_every_url(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_an_endpoint_is_named_without_its_credentials_and_sends_them_as_basic_auth() -> None:
    where = address("http://embedder:p%40ss@gpu1:18080/embed")
    assert where.url == "http://gpu1:18080"
    assert where.auth is not None
    request = httpx.Request("GET", where.url)
    assert next(where.auth.auth_flow(request)).headers["authorization"].startswith("Basic ")
    assert address("http://gpu1:18080").auth is None


def test_every_credential_a_mongodb_uri_carries_is_scrubbed() -> None:
    """The password, authMechanismProperties' values and secret options are hidden where the
    URI is printed, and where an error quotes one alone (decoded or not)."""
    from embedder.queue.connection import redact_uri, scrub

    uri = (
        "mongodb+srv://user:pa%2Fss@db.example.com/?authMechanism=MONGODB-AWS"
        "&authMechanismProperties=AWS_SESSION_TOKEN:t0kEn%2Bxyz,SERVICE_NAME:mongodb"
        "&tlsCertificateKeyFilePassword=keyPa55&appname=x"
    )
    shown = redact_uri(f"cannot reach {uri} now")
    for secret in ("pa%2Fss", "t0kEn", "keyPa55"):
        assert secret not in shown, shown
    assert "user:***@db.example.com" in shown and "appname=x" in shown, shown
    bare = scrub("auth failed for token t0kEn+xyz with pa/ss, key keyPa55 (mongodb)", uri)
    assert not any(s in bare for s in ("t0kEn", "pa/ss", "keyPa55")), bare
    assert "(mongodb)" in bare, bare

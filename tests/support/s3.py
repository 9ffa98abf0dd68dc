"""moto's S3 server on loopback, for what runs on ``s3://`` (the test extra installs it)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

_MOTO_SERVER = """
import sys
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple
# One request at a time: each conditional write is atomic, as S3's is.
run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app),
           threaded=False)
"""


@contextlib.contextmanager
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A bucket "bucket" on moto's S3 server; yields a pyarrow S3FileSystem on it. boto3 and
    pyarrow's ``s3://`` URIs find it through AWS_ENDPOINT_URL."""
    pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    import boto3  # type: ignore[import-untyped,import-not-found,unused-ignore]
    import pyarrow.fs as pafs

    from embedder.storage import conditional_create

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-c", _MOTO_SERVER, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "moto did not start"
                time.sleep(0.05)
        for name, value in {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(name, value)
        conditional_create._s3_client.cache_clear()
        boto3.client("s3").create_bucket(Bucket="bucket")
        yield pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            access_key="testing",
            secret_key="testing",
            region="us-east-1",
        )
    finally:
        conditional_create._s3_client.cache_clear()
        server.terminate()
        server.wait(10)

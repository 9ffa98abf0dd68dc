"""Conditional creates on object stores, for the output lease (``embedder.storage.output_lease``).

``pyarrow.fs`` has no "create only if absent", so the lease uses the store's own API: S3
``PutObject`` with ``If-None-Match: *`` through boto3 (the optional extra ``embedder[s3]``).
S3 answers 412 when the object exists and 409 when a concurrent conditional write of the same
key is in flight (retried: the next answer is 412 or a success). boto3 takes its endpoint and
credentials from the usual AWS settings (``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ...), which
must name the same store as the output URI's.

GCS would need ``ifGenerationMatch=0`` on an upload (google-cloud-storage); it is not
implemented, so a ``gs://`` output has no conditional create and the consolidator refuses it
unless told it is the only one.
"""

from __future__ import annotations

import functools
from typing import Any

import pyarrow.fs as pafs

from embedder.errors import ConfigurationError, StorageError
from embedder.storage.output_lease import ExclusiveCreate

_CONFLICT_RETRIES = 10


def for_uri(uri: str) -> ExclusiveCreate | None:
    """The conditional create for the store of ``uri``; None where there is none (local paths
    have their own, ``O_EXCL``)."""
    if uri.startswith("s3://"):
        return s3_create_exclusive
    return None


@functools.cache
def _s3_client() -> Any:
    try:
        import boto3  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        raise ConfigurationError(
            "an s3:// output needs boto3 for its lease's conditional create: "
            "pip install 'embedder[s3]'"
        ) from None
    return boto3.client("s3")


def s3_create_exclusive(fs: pafs.FileSystem, path: str, data: bytes) -> bool:
    """``PutObject`` with ``If-None-Match: *`` at ``path`` (``bucket/key``, as pyarrow names
    it); False when the object already exists."""
    from botocore.exceptions import ClientError  # type: ignore[import-untyped,import-not-found,unused-ignore]

    bucket, _, key = path.partition("/")
    for _ in range(_CONFLICT_RETRIES):
        try:
            _s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 412:
                return False
            if status == 409:  # ConditionalRequestConflict: another create is in flight
                continue
            raise StorageError(f"conditional create of s3://{path} failed: {exc}") from exc
        return True
    raise StorageError(f"conditional create of s3://{path} kept conflicting")

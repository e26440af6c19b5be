"""Where an S3-compatible store is and how to reach it: ``s3://`` locations and connections.

The one parser of ``s3://bucket[/key]`` and the one reader of the S3 settings in
the environment; the TLC mirror, the model store and the predictor's model
source all go through here, and each names its own problem in its own error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import urllib3
from minio import Minio

from components.errors import StorageError

SCHEME: Final = "s3://"
DEFAULT_ENDPOINT_URL: Final = "https://s3.amazonaws.com"


class S3UriError(StorageError):
    """A string that is not the kind of ``s3://`` location asked for."""


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key (or key prefix) in it; ``key`` has no leading or trailing ``/``."""

    bucket: str
    key: str = ""

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}" if self.key else f"{SCHEME}{self.bucket}"

    def join(self, name: str) -> S3Location:
        """The location of ``name`` inside this one (a file in a folder)."""
        name = name.strip("/")
        return S3Location(self.bucket, f"{self.key}/{name}" if self.key else name)


def parse_s3_uri(uri: str) -> S3Location:
    """``s3://bucket[/prefix]`` -> its location; slashes around the prefix do not matter."""
    if not uri.startswith(SCHEME):
        raise S3UriError(uri, "expected s3://bucket[/prefix]")
    bucket, _, key = uri.removeprefix(SCHEME).partition("/")
    if not bucket:
        raise S3UriError(uri, "expected s3://bucket[/prefix]")
    return S3Location(bucket, key.strip("/"))


def parse_object_uri(uri: str) -> S3Location:
    """``s3://bucket/key`` naming one object; a bucket alone or a key ending with ``/`` is a folder."""
    try:
        location = parse_s3_uri(uri)
    except S3UriError:
        raise S3UriError(uri, "expected s3://bucket/key") from None
    if not location.key or uri.endswith("/"):
        raise S3UriError(uri, "expected s3://bucket/key")
    return location


@dataclass(frozen=True)
class S3Connection:
    """How to reach an S3-compatible store; passed explicitly so tests need no env."""

    endpoint: str  # host[:port], no scheme, as the minio client wants it
    access_key: str
    secret_key: str = field(repr=False)
    secure: bool = True
    region: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Connection:
        """Read AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and S3_ENDPOINT_URL.

        S3_ENDPOINT_URL must carry its scheme (``http://minio-service.kubeflow:9000``)
        because the scheme decides TLS; unset means AWS S3 itself.
        """
        env = os.environ if env is None else env
        unset = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not env.get(k)]
        if unset:
            raise StorageError("environment", f"S3 access needs {', '.join(unset)} to be set")
        url = env.get("S3_ENDPOINT_URL") or DEFAULT_ENDPOINT_URL
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise StorageError(
                "environment", f"S3_ENDPOINT_URL must look like http(s)://host[:port], got {url!r}"
            )
        return cls(
            endpoint=parts.netloc,
            access_key=env["AWS_ACCESS_KEY_ID"],
            secret_key=env["AWS_SECRET_ACCESS_KEY"],
            secure=parts.scheme == "https",
        )

    def client(self) -> Minio:
        """A minio client with bounded retries/timeouts, so a dead endpoint fails in seconds."""
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=10, read=120),
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.secure,
            region=self.region,
            http_client=http,
        )

"""A real S3-compatible server (moto) on 127.0.0.1 for the S3 tests, and a way to put objects in it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

from minio import Minio
from moto.server import ThreadedMotoServer

from components.tlc_source import S3Connection


@contextmanager
def moto_s3() -> Iterator[S3Connection]:
    """Start moto's S3 server on a free loopback port; yields how to reach it; stops it after."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Connection(
            endpoint=f"{host}:{port}", access_key="test", secret_key="test", secure=False, region="us-east-1"
        )
    finally:
        server.stop()


def upload_object(conn: S3Connection, bucket: str, key: str, body: bytes) -> None:
    """Put ``body`` at ``bucket/key``, creating the bucket on first use."""
    client: Minio = conn.client()
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    client.put_object(bucket, key, io.BytesIO(body), len(body))

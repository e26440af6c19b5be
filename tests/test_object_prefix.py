"""Listing and downloading an S3 prefix (the monitor reads the log in MinIO so), against moto."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
from support.s3_server import Fault, faulty_proxy, upload_object

from components.storage.object_transfer import (
    ObjectIntegrityError,
    ObjectStoreError,
    download_prefix,
    list_prefix,
    upload_file,
)
from components.storage.s3 import S3Connection

BUCKET = "logs"
FAST = 0.01


@pytest.fixture(scope="module")
def store(s3_conn: S3Connection) -> S3Connection:
    s3_conn.client().make_bucket(BUCKET)
    # A log folder as the sink leaves it: complete segments, one write in progress, a sub-folder.
    for name, body in (
        ("part-2-a.parquet", b"second"),
        ("part-1-a.parquet", b"first"),
        ("part-3-a.parquet.tmp", b"half a segm"),
        ("notes.txt", b"not a segment"),
        ("nested/part-9-a.parquet", b"not directly under the prefix"),
    ):
        upload_object(s3_conn, BUCKET, f"log/{name}", body)
    upload_object(s3_conn, BUCKET, "log-other/part-0.parquet", b"a sibling prefix, not this one")
    return s3_conn


def test_listing_names_only_the_objects_directly_under_the_prefix(store: S3Connection):
    listed = list_prefix(store, f"s3://{BUCKET}/log/")
    assert [(item.name, item.size) for item in listed] == [
        ("notes.txt", 13),
        ("part-1-a.parquet", 5),
        ("part-2-a.parquet", 6),
        ("part-3-a.parquet.tmp", 11),
    ]
    assert listed[1].uri == f"s3://{BUCKET}/log/part-1-a.parquet"
    assert list_prefix(store, f"s3://{BUCKET}/nothing-here") == []


def test_download_takes_the_complete_segments_only(store: S3Connection, tmp_path: Path):
    fetched = download_prefix(store, f"s3://{BUCKET}/log", tmp_path / "log", pattern="part-*.parquet")
    assert [item.uri.rsplit("/", 1)[1] for item in fetched] == ["part-1-a.parquet", "part-2-a.parquet"]
    assert sorted(p.name for p in (tmp_path / "log").iterdir()) == ["part-1-a.parquet", "part-2-a.parquet"]
    assert (tmp_path / "log" / "part-2-a.parquet").read_bytes() == b"second"


def test_a_recorded_sha256_is_checked_even_when_none_is_required(store: S3Connection, tmp_path: Path):
    source = tmp_path / "segment.parquet"
    source.write_bytes(b"the real bytes")
    upload_file(store, source, f"s3://{BUCKET}/checked/part-1.parquet")
    assert download_prefix(store, f"s3://{BUCKET}/checked", tmp_path / "ok")[0].size == 14
    # Other bytes under a sha256 that is not theirs (as if changed behind our back): refused.
    body = b"other bytes!!!"
    recorded = hashlib.sha256(b"the real bytes").hexdigest()
    store.client().put_object(
        BUCKET, "checked/part-1.parquet", io.BytesIO(body), len(body), metadata={"sha256": recorded}
    )
    with pytest.raises(ObjectIntegrityError, match="does not match the recorded"):
        download_prefix(store, f"s3://{BUCKET}/checked", tmp_path / "refused")
    assert list((tmp_path / "refused").iterdir()) == []


def test_a_missing_bucket_is_a_missing_store_error(store: S3Connection, tmp_path: Path):
    with pytest.raises(ObjectStoreError, match="NoSuchBucket") as info:
        download_prefix(store, "s3://no-such-bucket/log", tmp_path)
    assert info.value.missing


def test_a_listing_outlasts_a_dropped_connection(store: S3Connection):
    with faulty_proxy(store) as proxy:
        proxy.add(Fault("drop", "GET", times=5))  # more than the HTTP client's own retries
        listed = list_prefix(proxy.connection, f"s3://{BUCKET}/log", backoff=FAST)
    assert [item.name for item in listed][:2] == ["notes.txt", "part-1-a.parquet"]
    assert [seen.action for seen in proxy.seen].count("drop") == 5


def test_not_an_s3_uri(store: S3Connection):
    with pytest.raises(ObjectStoreError, match="expected s3://bucket"):
        list_prefix(store, "/local/folder")

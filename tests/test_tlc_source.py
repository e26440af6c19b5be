"""Locating TLC files: local folders, a real HTTP server (cache), a moto S3 server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from support.s3_server import upload_object
from support.tlc_fixtures import write_trip_file

from components.data.ingest import load_month
from components.data.tlc_source import has_parquet_magic, resolve_trip_file
from components.errors import IngestError, StorageError
from components.storage.s3 import S3Connection

# ------------------------------------------------------------- local HTTP "CloudFront"


class _Routes(BaseHTTPRequestHandler):
    """Serves ``routes[path] = (status, body)``; unknown paths get 403 like CloudFront."""

    routes: ClassVar[dict[str, tuple[int, bytes]]] = {}

    def do_GET(self) -> None:
        status, body = self.routes.get(self.path, (403, b"<Error><Code>AccessDenied</Code></Error>"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


class HttpServer:
    def __init__(self) -> None:
        handler = type("Handler", (_Routes,), {"routes": {}})
        self.routes: dict[str, tuple[int, bytes]] = handler.routes
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/trip-data"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.running = True

    def serve(self, name: str, body: bytes, status: int = 200) -> None:
        self.routes[f"/trip-data/{name}"] = (status, body)

    def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def http() -> Iterator[HttpServer]:
    server = HttpServer()
    yield server
    server.stop()


@pytest.fixture
def parquet_bytes(tmp_path: Path) -> bytes:
    return write_trip_file(tmp_path / "src" / "x.parquet", rows=200).read_bytes()


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.name.endswith(".part"))


# ------------------------------------------------------------- data_dir


def test_data_dir_folder_and_file(tmp_path: Path) -> None:
    path = write_trip_file(tmp_path, color="yellow", month="2024-03", rows=40)

    by_folder = resolve_trip_file("yellow", "2024-03", data_dir=tmp_path)
    by_file = resolve_trip_file("yellow", "2024-03", data_dir=str(path))

    assert by_folder.path == by_file.path == path
    assert by_folder.source == str(path)
    assert by_folder.description == f"local file {path}"


def test_data_dir_wins_over_s3_and_http(tmp_path: Path) -> None:
    path = write_trip_file(tmp_path, rows=40)

    found = resolve_trip_file(
        "green", "2021-01", data_dir=tmp_path, s3_uri="s3://nowhere", base_url="http://x"
    )

    assert found.path == path


def test_data_dir_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope"

    with pytest.raises(IngestError) as err:
        resolve_trip_file("green", "2021-01", data_dir=missing)

    expected = missing / "green_tripdata_2021-01.parquet"
    assert str(err.value) == f"{expected}: [file_not_found] {missing} does not exist"


def test_tlc_named_file_for_another_month_is_rejected(tmp_path: Path) -> None:
    path = write_trip_file(tmp_path, month="2021-02", rows=40)

    with pytest.raises(IngestError) as err:
        resolve_trip_file("green", "2021-01", data_dir=path)

    assert (
        str(err.value) == f"{path}: [bad_request] file is green 2021-02 data but green 2021-01 was asked for"
    )


# ------------------------------------------------------------- HTTP


def test_http_download_then_offline_cache(tmp_path: Path, http: HttpServer, parquet_bytes: bytes) -> None:
    http.serve("green_tripdata_2021-01.parquet", parquet_bytes)
    cache = tmp_path / "cache"
    url = f"{http.base_url}/green_tripdata_2021-01.parquet"

    first = resolve_trip_file("green", "2021-01", cache_dir=cache, base_url=http.base_url)
    http.stop()  # from here on, only the cache can answer
    second = resolve_trip_file("green", "2021-01", cache_dir=cache, base_url=http.base_url)
    _, report = load_month("green", "2021-01", cache_dir=cache, base_url=http.base_url)

    assert first.path == second.path == cache / "green_tripdata_2021-01.parquet"
    assert first.path.read_bytes() == parquet_bytes
    assert first.source == second.source == report.source == url
    assert first.description.startswith("downloaded ")
    assert second.description.startswith("cached copy of ")
    assert report.rows_kept == 183
    assert _leftovers(cache) == []


def test_http_error_names_url_and_status(tmp_path: Path, http: HttpServer) -> None:
    http.serve("green_tripdata_2021-01.parquet", b"gone", status=404)

    with pytest.raises(IngestError) as err:
        resolve_trip_file("green", "2021-01", cache_dir=tmp_path, base_url=http.base_url)

    url = f"{http.base_url}/green_tripdata_2021-01.parquet"
    assert str(err.value) == f"{url}: [download_failed] HTTP 404 Not Found"
    assert list(tmp_path.iterdir()) == []


def test_unpublished_month_403_gets_a_hint(tmp_path: Path, http: HttpServer) -> None:
    with pytest.raises(IngestError) as err:
        load_month("yellow", "2099-01", cache_dir=tmp_path, base_url=http.base_url)

    url = f"{http.base_url}/yellow_tripdata_2099-01.parquet"
    assert str(err.value) == (
        f"{url}: [download_failed] HTTP 403 Forbidden (the TLC answers 403 for months it has not published)"
    )


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as sock:  # grab a free port, then close it so nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}/trip-data"

    with pytest.raises(IngestError) as err:
        resolve_trip_file("green", "2021-01", cache_dir=tmp_path, base_url=base, timeout=5)

    assert err.value.rule == "download_failed"
    assert str(err.value).startswith(
        f"{base}/green_tripdata_2021-01.parquet: [download_failed] no HTTP response"
    )


@pytest.mark.parametrize(
    ("body", "size"),
    [(b"<html>We are down for maintenance</html>", 40), (b"PAR1" + b"\0" * 100, 104)],
    ids=["html-page", "truncated"],
)
def test_non_parquet_body_is_not_cached(tmp_path: Path, http: HttpServer, body: bytes, size: int) -> None:
    http.serve("green_tripdata_2021-01.parquet", body)

    with pytest.raises(IngestError) as err:
        resolve_trip_file("green", "2021-01", cache_dir=tmp_path, base_url=http.base_url)

    url = f"{http.base_url}/green_tripdata_2021-01.parquet"
    assert str(err.value) == (
        f"{url}: [corrupt_parquet] downloaded body ({size} bytes) does not start and end with PAR1"
    )
    assert list(tmp_path.iterdir()) == []  # neither a cache entry nor a temp file


def test_download_needs_a_cache_dir() -> None:
    with pytest.raises(IngestError, match=r"\[bad_request\] downloading needs a cache_dir"):
        resolve_trip_file("green", "2021-01", base_url="http://127.0.0.1:9")


def test_has_parquet_magic(tmp_path: Path, parquet_bytes: bytes) -> None:
    good, short = tmp_path / "good", tmp_path / "short"
    good.write_bytes(parquet_bytes)
    short.write_bytes(b"PAR1")

    assert has_parquet_magic(good)
    assert not has_parquet_magic(short)


# ------------------------------------------------------------- S3 (moto server)


def test_s3_download(tmp_path: Path, s3_conn: S3Connection, parquet_bytes: bytes) -> None:
    upload_object(s3_conn, "tlc-mirror", "raw/tlc/green_tripdata_2021-01.parquet", parquet_bytes)

    found = resolve_trip_file(
        "green", "2021-01", s3_uri="s3://tlc-mirror/raw/tlc/", s3=s3_conn, cache_dir=tmp_path
    )
    _, report = load_month(
        "green", "2021-01", s3_uri="s3://tlc-mirror/raw/tlc", s3=s3_conn, cache_dir=tmp_path
    )

    assert found.path == tmp_path / "s3" / "tlc-mirror" / "raw" / "tlc" / "green_tripdata_2021-01.parquet"
    assert found.path.read_bytes() == parquet_bytes
    assert found.source == report.source == "s3://tlc-mirror/raw/tlc/green_tripdata_2021-01.parquet"
    assert report.rows_kept == 183
    assert _leftovers(tmp_path) == []


def test_s3_bucket_root_without_prefix(tmp_path: Path, s3_conn: S3Connection, parquet_bytes: bytes) -> None:
    upload_object(s3_conn, "tlc-root", "yellow_tripdata_2023-02.parquet", parquet_bytes)

    found = resolve_trip_file("yellow", "2023-02", s3_uri="s3://tlc-root", s3=s3_conn, cache_dir=tmp_path)

    assert found.source == "s3://tlc-root/yellow_tripdata_2023-02.parquet"


@pytest.mark.parametrize(
    ("uri", "code"),
    [("s3://tlc-mirror/other", "NoSuchKey"), ("s3://no-such-bucket/raw", "NoSuchBucket")],
)
def test_s3_missing_object_is_file_not_found(
    tmp_path: Path, s3_conn: S3Connection, parquet_bytes: bytes, uri: str, code: str
) -> None:
    upload_object(s3_conn, "tlc-mirror", "raw/tlc/green_tripdata_2021-01.parquet", parquet_bytes)

    with pytest.raises(IngestError) as err:
        resolve_trip_file("green", "2021-01", s3_uri=uri, s3=s3_conn, cache_dir=tmp_path)

    assert str(err.value).startswith(
        f"{uri}/green_tripdata_2021-01.parquet: [file_not_found] S3 error {code}"
    )
    assert _leftovers(tmp_path) == []


def test_s3_object_that_is_not_parquet(tmp_path: Path, s3_conn: S3Connection) -> None:
    upload_object(s3_conn, "tlc-junk", "green_tripdata_2021-01.parquet", b"not,a,parquet\n1,2,3\n")

    with pytest.raises(IngestError) as err:
        resolve_trip_file("green", "2021-01", s3_uri="s3://tlc-junk", s3=s3_conn, cache_dir=tmp_path)

    assert str(err.value).startswith("s3://tlc-junk/green_tripdata_2021-01.parquet: [corrupt_parquet]")


@pytest.mark.parametrize("uri", ["http://bucket/prefix", "s3://", "bucket/prefix"])
def test_bad_s3_uri(tmp_path: Path, uri: str) -> None:
    conn = S3Connection(endpoint="127.0.0.1:9", access_key="a", secret_key="b", secure=False)

    with pytest.raises(IngestError) as err:
        resolve_trip_file("green", "2021-01", s3_uri=uri, s3=conn, cache_dir=tmp_path)

    assert str(err.value) == f"{uri}: [bad_request] S3 location must look like s3://bucket[/prefix]"


def test_s3_connection_from_env() -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "minio",
        "AWS_SECRET_ACCESS_KEY": "minio123",
        "S3_ENDPOINT_URL": "http://minio-service.kubeflow:9000",
    }

    conn = S3Connection.from_env(env)

    assert conn == S3Connection("minio-service.kubeflow:9000", "minio", "minio123", secure=False)
    assert "minio123" not in repr(conn)
    assert S3Connection.from_env({**env, "S3_ENDPOINT_URL": "https://s3.example.com"}).secure


@pytest.mark.parametrize(
    ("env", "detail"),
    [
        ({"AWS_ACCESS_KEY_ID": "a"}, "S3 access needs AWS_SECRET_ACCESS_KEY to be set"),
        (
            {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "S3_ENDPOINT_URL": "minio:9000"},
            "S3_ENDPOINT_URL must look like http(s)://host[:port], got 'minio:9000'",
        ),
    ],
)
def test_s3_connection_from_env_errors(env: dict[str, str], detail: str) -> None:
    # A storage misconfiguration is a storage error, whoever asked (ingest, model store, predictor).
    with pytest.raises(StorageError) as err:
        S3Connection.from_env(env)

    assert not isinstance(err.value, IngestError)
    assert str(err.value) == f"environment: {detail}"

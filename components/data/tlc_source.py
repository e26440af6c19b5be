"""Find the local parquet file for one (color, month) of TLC trip data.

Three sources, in order of preference:

1. ``data_dir``: a file, or a folder holding ``{color}_tripdata_{YYYY-MM}.parquet``
   (air-gapped clusters, tests, the course's ``data/`` folder);
2. ``s3_uri``: ``s3://bucket/prefix`` on MinIO/S3, fetched with the ``minio`` client
   through ``components.storage.object_transfer`` (retried, size-checked; the in-cluster mirror
   a KFP run reads from);
3. the public TLC CloudFront URL, downloaded once into ``cache_dir``.

Downloads land in a temporary file in the destination folder, are checked for the
parquet magic bytes at both ends (an HTML error page or a truncated transfer fails
here, not deep inside pyarrow), then renamed atomically: a cache entry is either
absent or complete, even if a run is killed mid-download.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import requests

from components.data.tlc_schema import check_request
from components.errors import IngestError
from components.names import TLC_BASE_URL
from components.storage.atomic_write import temp_file_beside
from components.storage.object_transfer import ObjectStoreError, download_file
from components.storage.s3 import S3Connection, S3Location, S3UriError, parse_s3_uri

PARQUET_MAGIC: Final = b"PAR1"
_CHUNK: Final = 1 << 20
_TLC_NAME_RE: Final = re.compile(r"^(green|yellow)_tripdata_(\d{4}-\d{2})\.parquet$")


def trip_file_name(color: str, month: str) -> str:
    """The TLC's own file name, used for local folders, buckets and the cache alike."""
    return f"{color}_tripdata_{month}.parquet"


@dataclass(frozen=True)
class ResolvedFile:
    """A local parquet file and where it came from.

    ``source`` is the canonical origin (path, s3:// URI or URL) that reports and
    error messages cite; ``description`` says how it was obtained, for logs.
    """

    path: Path
    source: str
    description: str


def resolve_trip_file(
    color: str,
    month: str,
    *,
    data_dir: Path | str | None = None,
    s3_uri: str | None = None,
    s3: S3Connection | None = None,
    cache_dir: Path | str | None = None,
    base_url: str = TLC_BASE_URL,
    timeout: float = 60.0,
) -> ResolvedFile:
    """Return a local parquet path for (color, month), fetching it if needed.

    ``data_dir`` wins over ``s3_uri``, which wins over HTTP. ``s3`` defaults to
    ``S3Connection.from_env()``. ``cache_dir`` is required only for downloads.
    """
    check_request(color, month)
    if data_dir is not None:
        return _from_data_dir(Path(data_dir), color, month)
    if s3_uri is not None:
        location = _trip_file_location(s3_uri, trip_file_name(color, month))
        dest = _require_cache_dir(cache_dir, color, month) / "s3" / location.bucket / location.key
        return _from_s3(s3 or S3Connection.from_env(), location.uri, dest)
    url = f"{base_url.rstrip('/')}/{trip_file_name(color, month)}"
    dest = _require_cache_dir(cache_dir, color, month) / trip_file_name(color, month)
    return _from_http(url, dest, timeout)


def _from_data_dir(data_dir: Path, color: str, month: str) -> ResolvedFile:
    wanted = trip_file_name(color, month)
    path = data_dir if data_dir.is_file() else data_dir / wanted
    if not path.is_file():
        where = f"no {wanted} in {data_dir}" if data_dir.is_dir() else f"{data_dir} does not exist"
        raise IngestError(str(path), "file_not_found", where)
    # A TLC-named file for another color/month is a wiring mistake, not data to clean.
    named = _TLC_NAME_RE.match(path.name)
    if named and path.name != wanted:
        raise IngestError(
            str(path), "bad_request", f"file is {named[1]} {named[2]} data but {color} {month} was asked for"
        )
    return ResolvedFile(path=path, source=str(path), description=f"local file {path}")


def _require_cache_dir(cache_dir: Path | str | None, color: str, month: str) -> Path:
    if cache_dir is None:
        raise IngestError(
            f"request(color={color!r}, month={month!r})",
            "bad_request",
            "downloading needs a cache_dir (or pass data_dir with the file)",
        )
    return Path(cache_dir)


def _from_http(url: str, dest: Path, timeout: float) -> ResolvedFile:
    if dest.is_file():
        return ResolvedFile(path=dest, source=url, description=f"cached copy of {url} at {dest}")
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            if response.status_code >= 400:
                raise IngestError(url, "download_failed", _http_status_detail(response))
            _write_checked(response.iter_content(_CHUNK), dest, url)
    except requests.RequestException as exc:
        raise IngestError(url, "download_failed", f"no HTTP response: {exc}") from exc
    return ResolvedFile(path=dest, source=url, description=f"downloaded {url} to {dest}")


def _http_status_detail(response: requests.Response) -> str:
    detail = f"HTTP {response.status_code} {response.reason}"
    if response.status_code == 403:
        # CloudFront answers 403, not 404, for a month the TLC has not published yet.
        detail += " (the TLC answers 403 for months it has not published)"
    return detail


def _trip_file_location(uri: str, file_name: str) -> S3Location:
    try:
        return parse_s3_uri(uri).join(file_name)
    except S3UriError:
        raise IngestError(uri, "bad_request", "S3 location must look like s3://bucket[/prefix]") from None


def _from_s3(conn: S3Connection, uri: str, dest: Path) -> ResolvedFile:
    # Always re-fetched: the bucket is the in-cluster source of truth and may be
    # re-uploaded, while a cluster-local transfer is cheap.
    dest.parent.mkdir(parents=True, exist_ok=True)
    with temp_file_beside(dest) as (tmp, tmp_path):
        tmp.close()
        try:
            # Retried and size-checked (sha256 too when the object records one; a plain
            # `mc mirror` copy does not), then checked for parquet before it becomes dest.
            download_file(conn, uri, tmp_path, require_sha256=False)
        except ObjectStoreError as exc:
            rule = "file_not_found" if exc.missing else "download_failed"
            detail = f"S3 error {exc.problem} (endpoint {conn.endpoint})" if exc.code else exc.problem
            raise IngestError(uri, rule, detail) from exc
        _check_parquet(tmp_path, uri)
        os.replace(tmp_path, dest)
    return ResolvedFile(path=dest, source=uri, description=f"downloaded {uri} to {dest}")


def _write_checked(chunks: Iterable[bytes], dest: Path, source: str) -> None:
    """Stream ``chunks`` to ``dest`` atomically, refusing anything that is not parquet."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with temp_file_beside(dest) as (tmp, tmp_path):
        for chunk in chunks:
            tmp.write(chunk)
        tmp.close()
        _check_parquet(tmp_path, source)
        os.replace(tmp_path, dest)


def _check_parquet(path: Path, source: str) -> None:
    """Refuse an HTML error page or a truncated body here, not deep inside pyarrow."""
    if not has_parquet_magic(path):
        raise IngestError(
            source,
            "corrupt_parquet",
            f"downloaded body ({path.stat().st_size} bytes) does not start and end with PAR1",
        )


def has_parquet_magic(path: Path) -> bool:
    """True when ``path`` begins and ends with ``PAR1`` (header and footer magic)."""
    size = path.stat().st_size
    if size < 2 * len(PARQUET_MAGIC):
        return False
    with path.open("rb") as fh:
        head = fh.read(len(PARQUET_MAGIC))
        fh.seek(-len(PARQUET_MAGIC), os.SEEK_END)
        tail = fh.read(len(PARQUET_MAGIC))
    return head == PARQUET_MAGIC and tail == PARQUET_MAGIC

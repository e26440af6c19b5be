"""Move files to and from an S3-compatible store (MinIO in the cluster) without ever trusting a half transfer.

Every upload records the file's sha256 as object metadata (``x-amz-meta-sha256``)
and is checked afterwards with a HEAD (size and that metadata) before the caller
may rely on it. Every download streams into a temporary file beside the
destination, checks the byte count and the sha256 (the caller's, else the
recorded one), and only then renames it into place: the destination is either
absent or verified, even if the process is killed mid-transfer.

Two retry layers, on purpose: the minio client's urllib3 pool (see
``S3Connection.client``) retries single requests that failed before a body was
read (5xx, refused connections); this module retries whole operations that
cannot be resumed in place — a download cut mid-body, an upload whose stored
object does not check out, or a request whose urllib3 retries ran out. A
checksum mismatch is never retried: the store holds different bytes, and
asking again would only fetch them again.

What goes where (the model store's layout) is the registry's business:
``components.registry.model_store``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, TypeVar

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError

from components.errors import ModelIntegrityError, StorageError
from components.storage.atomic_write import temp_file_beside
from components.storage.checksums import file_sha256
from components.storage.s3 import S3Connection, S3Location, S3UriError, parse_object_uri, parse_s3_uri

SHA256_METADATA: Final = "sha256"  # stored as the x-amz-meta-sha256 header
DEFAULT_ATTEMPTS: Final = 3
DEFAULT_BACKOFF: Final = 0.5  # seconds before the 2nd attempt; doubles after each failure
_CHUNK: Final = 1 << 20
_MISSING_CODES: Final = frozenset({"NoSuchKey", "NoSuchBucket"})
# S3 error codes that mean "try again later", whatever the HTTP status says.
_TRANSIENT_CODES: Final = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "OperationAborted"}
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class ObjectStoreError(StorageError):
    """An object could not be stored or fetched; names the URI, the problem and the S3 code if any."""

    def __init__(self, uri: str, problem: str, code: str | None = None) -> None:
        self.uri = uri
        self.code = code
        super().__init__(uri, problem)

    @property
    def missing(self) -> bool:
        """True when the object or its bucket does not exist (as opposed to an unreachable store)."""
        return self.code in _MISSING_CODES


class ObjectIntegrityError(ObjectStoreError, ModelIntegrityError):
    """Stored bytes do not match the recorded sha256 (or none is recorded); never retried.

    Also a ``ModelIntegrityError``, so callers that refuse tampered model files
    refuse these the same way.
    """


class _RetryableMismatch(Exception):
    """A transfer finished but its result does not check out in a way another try may fix."""


@dataclass(frozen=True)
class StoredObject:
    """An object whose size and sha256 were checked after the transfer."""

    uri: str
    size: int
    sha256: str


def object_location(uri: str) -> S3Location:
    """The bucket and key of one object, or an ObjectStoreError naming ``uri``."""
    try:
        return parse_object_uri(uri)
    except S3UriError as exc:
        raise ObjectStoreError(uri, exc.problem) from None


def connection_for(uri: str, s3: S3Connection | None) -> S3Connection:
    """``s3``, or one from the environment; a missing variable becomes an ObjectStoreError naming ``uri``."""
    if s3 is not None:
        return s3
    try:
        return S3Connection.from_env()
    except StorageError as exc:
        raise ObjectStoreError(uri, exc.problem) from exc


# -------------------------------------------------------------------- uploads


def upload_file(
    conn: S3Connection,
    local_path: Path | str,
    uri: str,
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
    content_type: str = "application/octet-stream",
) -> StoredObject:
    """Store ``local_path`` at ``uri`` with its sha256 as metadata, then check size and metadata.

    Retries transient failures; if every attempt fails, an object left at ``uri``
    that does not check out is removed, so a cut upload never sits at the final key.
    """
    location = object_location(uri)
    bucket, key = location.bucket, location.key
    path = Path(local_path)
    expected = StoredObject(uri, path.stat().st_size, file_sha256(path))
    client = conn.client()

    def attempt() -> StoredObject:
        with path.open("rb") as body:
            client.put_object(
                bucket,
                key,
                body,
                expected.size,
                content_type=content_type,
                metadata={SHA256_METADATA: expected.sha256},
            )
        _check_stored(client, bucket, key, expected)
        return expected

    try:
        return _with_retries(attempt, uri=uri, endpoint=conn.endpoint, attempts=attempts, backoff=backoff)
    except ObjectStoreError:
        _remove_unless_verified(client, bucket, key, expected)
        raise


def _check_stored(client: Minio, bucket: str, key: str, expected: StoredObject) -> None:
    stat = client.stat_object(bucket, key)
    recorded = _recorded_sha256(stat.metadata)
    if stat.size != expected.size or recorded != expected.sha256:
        raise _RetryableMismatch(
            f"stored object has {stat.size} bytes and sha256 {recorded}, "
            f"expected {expected.size} bytes and sha256 {expected.sha256}"
        )


def _remove_unless_verified(client: Minio, bucket: str, key: str, expected: StoredObject) -> None:
    """Best effort: S3 never stores a partial PUT, but a store that does must not keep it at the final key."""
    try:
        _check_stored(client, bucket, key, expected)
    except _RetryableMismatch:
        with contextlib.suppress(Exception):
            client.remove_object(bucket, key)
            log.warning("removed %s: it did not match the file that failed to upload", expected.uri)
    except Exception:  # absent object or unreachable store: nothing to clean up here
        pass


def remove_object(
    conn: S3Connection, uri: str, *, attempts: int = DEFAULT_ATTEMPTS, backoff: float = DEFAULT_BACKOFF
) -> None:
    """Delete the object at ``uri``, retried like an upload; an absent object is not an error
    (S3 answers a delete of a missing key with success, so removing is idempotent)."""
    location = object_location(uri)
    client = conn.client()

    def attempt() -> None:
        client.remove_object(location.bucket, location.key)

    _with_retries(attempt, uri=uri, endpoint=conn.endpoint, attempts=attempts, backoff=backoff)


# ------------------------------------------------------------------ downloads


def download_file(
    conn: S3Connection,
    uri: str,
    dest: Path | str,
    *,
    expected_sha256: str | None = None,
    require_sha256: bool = True,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
) -> StoredObject:
    """Download ``uri`` to ``dest`` atomically after checking its size and sha256.

    The sha256 checked is ``expected_sha256``, else the object's recorded one; if the
    object records one that disagrees with ``expected_sha256``, it is refused. With
    neither, the download is refused unless ``require_sha256=False`` (then only the
    size is checked). On any failure ``dest`` is left as it was and no temporary file
    remains. Transient failures are retried; checksum mismatches are not.
    """
    location = object_location(uri)
    bucket, key = location.bucket, location.key
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    client = conn.client()

    def attempt() -> StoredObject:
        response = client.get_object(bucket, key)
        try:
            sha256 = _sha256_to_check(
                uri, expected_sha256, _recorded_sha256(response.headers), require_sha256
            )
            with temp_file_beside(target) as (tmp, tmp_path):
                size, actual = _stream_hashed(response, tmp)
                tmp.close()
                _check_length(response, size)
                if sha256 is not None and actual != sha256:
                    raise ObjectIntegrityError(uri, f"sha256 {actual} does not match the recorded {sha256}")
                os.replace(tmp_path, target)
        finally:
            response.close()
            response.release_conn()
        return StoredObject(uri, size, actual)

    return _with_retries(attempt, uri=uri, endpoint=conn.endpoint, attempts=attempts, backoff=backoff)


def read_object(
    conn: S3Connection,
    uri: str,
    *,
    limit: int = 1 << 16,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
) -> bytes:
    """The bytes of a small object (a sidecar), retried like a download; refuses objects over ``limit``."""
    location = object_location(uri)
    bucket, key = location.bucket, location.key
    client = conn.client()

    def attempt() -> bytes:
        response = client.get_object(bucket, key)
        try:
            body = response.read(limit + 1)
        finally:
            response.close()
            response.release_conn()
        if len(body) > limit:
            raise ObjectStoreError(uri, f"object is larger than the {limit} bytes expected here")
        _check_length(response, len(body))
        return body

    return _with_retries(attempt, uri=uri, endpoint=conn.endpoint, attempts=attempts, backoff=backoff)


def _sha256_to_check(uri: str, expected: str | None, recorded: str | None, required: bool) -> str | None:
    if expected is not None:
        expected = expected.strip().lower()
        if recorded is not None and recorded != expected:
            raise ObjectIntegrityError(
                uri, f"expected sha256 {expected} but the object records {recorded}; refusing to guess"
            )
        return expected
    if recorded is None and required:
        raise ObjectIntegrityError(
            uri, "no sha256 given and none recorded on the object; refusing an unverifiable download"
        )
    return recorded


def _stream_hashed(response: urllib3.BaseHTTPResponse, out: IO[bytes]) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    for chunk in response.stream(_CHUNK):
        out.write(chunk)
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _check_length(response: urllib3.BaseHTTPResponse, received: int) -> None:
    # urllib3 enforces Content-Length too; this also covers a response that had none.
    announced = response.headers.get("content-length")
    if announced is not None and int(announced) != received:
        raise _RetryableMismatch(f"received {received} of {announced} bytes")


def _recorded_sha256(headers: Mapping[str, str] | None) -> str | None:
    # Response headers are case-insensitive (urllib3's HTTPHeaderDict); the store may change the case.
    value = (headers or {}).get(f"x-amz-meta-{SHA256_METADATA}")
    return value.strip().lower() if value and value.strip() else None


# -------------------------------------------------------------------- retries


def _with_retries(operation: Callable[[], T], *, uri: str, endpoint: str, attempts: int, backoff: float) -> T:
    """Run ``operation`` up to ``attempts`` times while it fails transiently; ObjectStoreError otherwise."""
    for attempt in range(1, max(attempts, 1) + 1):
        try:
            return operation()
        except ObjectStoreError:
            raise
        except Exception as exc:  # classified below, re-raised as ObjectStoreError
            problem = _transient_problem(exc, endpoint)
            if problem is None:
                raise _as_store_error(uri, exc) from exc
            if attempt >= attempts:
                raise ObjectStoreError(uri, f"{problem}; gave up after {attempt} attempts") from exc
            delay = backoff * 2 ** (attempt - 1)
            log.warning(
                "%s: %s; attempt %d of %d failed, retrying in %.2fs", uri, problem, attempt, attempts, delay
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


def _transient_problem(exc: Exception, endpoint: str) -> str | None:
    """A description if another attempt may succeed, else None."""
    if isinstance(exc, _RetryableMismatch):
        return str(exc)
    if isinstance(exc, S3Error):
        status = getattr(exc.response, "status", 0) or 0
        if exc.code in _TRANSIENT_CODES or status >= 500:
            return f"S3 error {exc.code} (HTTP {status})"
        return None
    if isinstance(exc, ServerError):
        return f"HTTP {exc.status_code} from {endpoint}" if exc.status_code >= 500 else None
    if isinstance(exc, InvalidResponseError):
        # A proxy's HTML error page in front of the store; only 5xx ones are worth another try.
        status = getattr(exc, "_code", 0) or 0
        return f"non-S3 HTTP {status} response from {endpoint}" if status >= 500 else None
    if isinstance(
        exc, urllib3.exceptions.HTTPError | http.client.HTTPException | ConnectionError | TimeoutError
    ):
        # Refused/reset connections, cut bodies, timeouts, urllib3's own retries exhausted.
        # Other OSErrors (a full disk, a read-only folder) are local: retrying will not help.
        return f"cannot reach the object store at {endpoint} ({exc})"
    return None


def _as_store_error(uri: str, exc: Exception) -> ObjectStoreError:
    if isinstance(exc, S3Error):
        return ObjectStoreError(uri, f"{exc.code} ({exc.message})", exc.code)
    return ObjectStoreError(uri, f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------- prefixes


@dataclass(frozen=True)
class ListedObject:
    """One object directly under a prefix, as listed (not yet checked: listing reads no body)."""

    uri: str
    name: str  # the part of the key after the prefix
    size: int


def list_prefix(
    conn: S3Connection,
    uri: str,
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
) -> list[ListedObject]:
    """The objects directly under ``s3://bucket/prefix`` (not in sub-folders), in key order.

    An empty or absent prefix is an empty list; an absent bucket is an ObjectStoreError
    whose ``missing`` is True. The whole listing is one retried operation: a listing
    cut between two pages is started again, never returned half.
    """
    try:
        location = parse_s3_uri(uri)
    except S3UriError as exc:
        raise ObjectStoreError(uri, exc.problem) from None
    prefix = f"{location.key}/" if location.key else ""
    client = conn.client()

    def attempt() -> list[ListedObject]:
        listed = []
        for item in client.list_objects(location.bucket, prefix=prefix, recursive=False):
            if item.is_dir or not item.object_name:
                continue
            name = item.object_name.removeprefix(prefix)
            listed.append(ListedObject(location.join(name).uri, name, int(item.size or 0)))
        return sorted(listed, key=lambda listed_object: listed_object.name)

    return _with_retries(attempt, uri=uri, endpoint=conn.endpoint, attempts=attempts, backoff=backoff)


def download_prefix(
    conn: S3Connection,
    uri: str,
    dest_dir: Path | str,
    *,
    pattern: str = "*",
    require_sha256: bool = False,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
) -> list[StoredObject]:
    """Download every object directly under ``uri`` whose name matches ``pattern`` into ``dest_dir``.

    Each file goes through :func:`download_file`: a file is either absent or checked
    (size, and the recorded sha256 when the object has one). ``require_sha256=False``
    by default because a prefix may hold objects other tools put there (``mc cp``)
    without our metadata; an object that records a sha256 is always checked against it.
    ``pattern`` is an ``fnmatch`` pattern on the name, e.g. ``part-*.parquet`` for the
    prediction log's complete segments (never its ``.tmp`` writes in progress).
    """
    import fnmatch

    target = Path(dest_dir)
    target.mkdir(parents=True, exist_ok=True)
    fetched = []
    for listed in list_prefix(conn, uri, attempts=attempts, backoff=backoff):
        if not fnmatch.fnmatchcase(listed.name, pattern):
            continue
        fetched.append(
            download_file(
                conn,
                listed.uri,
                target / listed.name,
                require_sha256=require_sha256,
                attempts=attempts,
                backoff=backoff,
            )
        )
    return fetched

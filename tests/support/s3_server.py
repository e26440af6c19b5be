"""A real S3-compatible server (moto) on 127.0.0.1 for the S3 tests, and a way to put objects in it.

``FaultyProxy`` sits in front of it on a real socket and injects the failures a
cluster sees (503s, dropped connections, bodies cut short) so retries are tested
against real HTTP, not mocks.
"""

from __future__ import annotations

import contextlib
import io
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import IO

from minio import Minio
from moto.server import ThreadedMotoServer

from components.storage.s3 import S3Connection


@contextmanager
def moto_s3() -> Iterator[S3Connection]:
    """Start moto's S3 server on a free loopback port; yields how to reach it; stops it after."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    conn = S3Connection(
        endpoint=f"{host}:{port}", access_key="test", secret_key="test", secure=False, region="us-east-1"
    )
    # moto keeps its buckets in this process, not in the server: a new server would see what an
    # earlier test module left (the same bucket names, e.g. s3://monitoring). Start empty.
    _empty(conn.client())
    try:
        yield conn
    finally:
        server.stop()


def _empty(client: Minio) -> None:
    for bucket in client.list_buckets():
        for found in client.list_objects(bucket.name, recursive=True):
            client.remove_object(bucket.name, found.object_name)
        client.remove_bucket(bucket.name)


def upload_object(conn: S3Connection, bucket: str, key: str, body: bytes) -> None:
    """Put ``body`` at ``bucket/key``, creating the bucket on first use."""
    client: Minio = conn.client()
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    client.put_object(bucket, key, io.BytesIO(body), len(body))


# ------------------------------------------------------------ fault injection


@dataclass
class Fault:
    """What the proxy does to requests with ``method`` (``"*"``: any), ``times`` times (None: always).

    kinds: ``status_503`` answers 503 without asking the store; ``drop`` reads the
    request and closes the connection unanswered; ``cut_request`` passes the headers
    and the first ``after_bytes`` of the body to the store, then closes both sides;
    ``cut_response`` passes the store's headers and the first ``after_bytes`` of its
    body to the client, then closes; ``truncate_body`` sends the store only the first
    ``after_bytes`` of the body as a complete request (a store that kept a short
    upload and said 200) and relays its answer.
    """

    kind: str
    method: str = "*"
    times: int | None = 1
    after_bytes: int = 0


@dataclass(frozen=True)
class Seen:
    """One request as the proxy saw it, and what it did with it (``pass`` or a fault kind)."""

    method: str
    path: str
    action: str


class FaultyProxy:
    """An HTTP proxy on 127.0.0.1 in front of a real S3 server that injects faults, on real sockets.

    Requests are read one at a time (keep-alive from the client is honoured) and each
    is sent to the store on a fresh connection with ``Connection: close``, so the
    store's response ends where its connection does and is relayed as it comes.
    """

    def __init__(self, upstream: S3Connection) -> None:
        self._upstream = upstream.endpoint.rsplit(":", 1)
        self._faults: list[Fault] = []
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve_connection(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.connection = replace(upstream, endpoint=f"127.0.0.1:{self._server.server_address[1]}")
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def add(self, fault: Fault) -> FaultyProxy:
        with self._lock:
            self._faults.append(fault)
        return self

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._seen.clear()

    @property
    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _action_for(self, method: str, path: str) -> Fault | None:
        with self._lock:
            fault = next(
                (f for f in self._faults if f.method in ("*", method) and f.times != 0),
                None,
            )
            if fault is not None and fault.times is not None:
                fault.times -= 1
            self._seen.append(Seen(method, path, fault.kind if fault else "pass"))
            return fault

    def _serve_connection(self, client: socket.socket) -> None:
        reader = client.makefile("rb")
        try:
            while True:
                head = _read_head(reader)
                if head is None:
                    return
                method, path, headers = _parse_head(head)
                length = int(headers.get("content-length", "0"))
                fault = self._action_for(method, path)
                if fault is not None and fault.kind == "cut_request":
                    self._forward(head, reader.read(min(length, fault.after_bytes)), None, complete=False)
                    return
                body = reader.read(length)
                if fault is not None and fault.kind == "truncate_body":
                    head, body = _with_content_length(head, fault.after_bytes), body[: fault.after_bytes]
                    fault = None  # relay the store's answer as is
                if fault is not None and fault.kind == "drop":
                    return
                if fault is not None and fault.kind == "status_503":
                    client.sendall(_unavailable_response())
                    return
                keep = self._forward(head, body, client, cut_after=fault.after_bytes if fault else None)
                if not keep:
                    return
        except OSError:
            return
        finally:
            reader.close()
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()

    def _forward(
        self,
        head: bytes,
        body: bytes,
        client: socket.socket | None,
        *,
        complete: bool = True,
        cut_after: int | None = None,
    ) -> bool:
        """Send one request to the store and relay its answer; False when the client connection must close."""
        host, port = self._upstream
        with socket.create_connection((host, int(port)), timeout=30) as upstream:
            upstream.sendall(_with_connection_close(head) + body)
            if not complete:
                # Like a pod killed mid-upload: the store sees a short body, then EOF.
                upstream.shutdown(socket.SHUT_WR)
                return False
            response = _read_all(upstream)
        assert client is not None
        if cut_after is None:
            client.sendall(response)
            return True
        header_end = response.index(b"\r\n\r\n") + 4
        client.sendall(response[: header_end + cut_after])
        return False


def _read_head(reader: IO[bytes]) -> bytes | None:
    lines = []
    while True:
        line = reader.readline(65536)
        if not line:
            return None
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return method, path, headers


def _with_connection_close(head: bytes) -> bytes:
    lines = [
        line
        for line in head.rstrip(b"\r\n").split(b"\r\n")
        if not line.lower().startswith((b"connection:", b"keep-alive:"))
    ]
    return b"\r\n".join([*lines, b"Connection: close", b"", b""])


def _with_content_length(head: bytes, length: int) -> bytes:
    lines = [
        f"Content-Length: {length}".encode() if line.lower().startswith(b"content-length:") else line
        for line in head.rstrip(b"\r\n").split(b"\r\n")
    ]
    return b"\r\n".join([*lines, b"", b""])


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _unavailable_response() -> bytes:
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
        b"<Message>injected by FaultyProxy</Message></Error>"
    )
    return (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


@contextmanager
def faulty_proxy(upstream: S3Connection) -> Iterator[FaultyProxy]:
    """A FaultyProxy in front of ``upstream``; ``proxy.connection`` reaches the store through it."""
    proxy = FaultyProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()

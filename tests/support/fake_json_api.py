"""A real HTTP server on 127.0.0.1 answering JSON from a handler: the tests' fake Kubernetes and KFP APIs.

These APIs are the one thing that cannot exist here, so the tests fake them; the
clients (``kubernetes``, ``kfp.Client``) are the real ones, talking real HTTP.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: (method, path, request headers, raw body) -> (status, JSON body)
JsonHandler = Callable[[str, str, Message, str], tuple[int, Any]]


@contextlib.contextmanager
def serve_json(handle: JsonHandler) -> Iterator[str]:
    """Serve ``handle`` for GET/POST/PATCH until the block ends; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode() if length else ""
            code, body = handle(self.command, self.path, self.headers, raw)
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()

"""One error shape for everything the predictor refuses: ``{"error": "..."}`` with a 4xx status.

KServe answers its own errors (``InvalidInput`` -> 400, ``ModelNotFound`` -> 404)
as ``{"error": message}``, and :mod:`serving.trip_request` raises ``InvalidInput``
naming the field and row. What reaches the server before KServe's handlers does
not: FastAPI's request validation (a v2 body whose ``inputs`` lack a ``shape``)
answers 422 ``{"detail": [...]}``, Starlette's routing answers 404/405
``{"detail": "..."}``, a body nested thousands of levels deep raises
``RecursionError`` in the JSON decoder (a 500), and ``GET /v1/models/duration:predict``
matches the model-metadata route with the model name ``duration:predict`` (404,
"model duration:predict does not exist"). :func:`install` maps all of these to
the one shape, with the status a client can act on. A 500 also makes uvicorn
drop the keep-alive connection, which a proxy in front may reuse; keeping bad
requests at 4xx keeps them from costing the next, unrelated request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths (by suffix) that only take POST: v1 predict/explain, v2 infer.
POST_ONLY_SUFFIXES = (":predict", ":explain", "/infer")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message}, headers=headers)


def validation_message(errors: Sequence[Any]) -> str:
    """FastAPI's validation errors as one sentence naming the first field (and how many more)."""
    if not errors:
        return "request body does not match the v2 inference request schema"
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return f"body is not JSON ({detail}); send application/json" if detail else "body is not JSON"
    where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "InferenceRequest"))
    message = f"{where or 'body'}: {first.get('msg', 'invalid')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s) in the body)"
    return message


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(HTTPStatus.BAD_REQUEST, validation_message(exc.errors()))


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def _too_deep(_: Request, exc: Exception) -> JSONResponse:
    # Only a request body reaches this deep on the request path: the decoders recurse per level.
    return error_response(
        HTTPStatus.BAD_REQUEST, "request body nests too deeply to decode; send a flat list of trips"
    )


class PostOnlyPaths:
    """ASGI middleware: a non-POST request to a predict/infer path gets 405, not the metadata route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] != "POST"
            and str(scope["path"]).endswith(POST_ONLY_SUFFIXES)
        ):
            response = error_response(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{scope['method']} is not allowed on {scope['path']}; send the trips with POST",
                {"allow": "POST"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def install(app: FastAPI) -> None:
    """Give ``app`` (KServe's FastAPI app, before it serves) the one error shape."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RecursionError, _too_deep)
    app.add_middleware(PostOnlyPaths)

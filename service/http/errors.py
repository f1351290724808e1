"""The one mapping of errors to HTTP answers: ``{"error": message}`` with the error's status.

A :class:`~service.errors.ServiceError` is answered with its ``status`` and ``headers`` (``Retry-After``
for the retryable kinds, ``WWW-Authenticate`` for a missing token); FastAPI's request validation errors
become 400, Starlette's HTTP errors keep their status, and anything else is a logged 500 whose body
says no more than "internal server error". The fast path (:func:`asgi_error`) and FastAPI's handlers both
answer through :func:`error_parts`, so the two cannot drift apart.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ServiceError

log = logging.getLogger("service")
JSON = "application/json"


def error_parts(exc: BaseException) -> tuple[int, bytes, dict[str, str]]:
    """``(status, body, headers)`` of the answer to ``exc``; unexpected errors are logged by the caller."""
    if isinstance(exc, ServiceError):
        return int(exc.status), _body(exc.message), dict(exc.headers)
    if isinstance(exc, RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return HTTPStatus.BAD_REQUEST, _body("; ".join(parts) or "invalid request"), {}
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code, _body(str(exc.detail)), dict(exc.headers or {})
    return HTTPStatus.INTERNAL_SERVER_ERROR, _body("internal server error"), {}


def asgi_error(exc: BaseException, path: str) -> tuple[int, bytes, dict[str, str]]:
    """``(status, body, headers)`` of a raw ASGI answer to ``exc`` (the fast path's), content type
    included; an unexpected error is logged with ``path``."""
    if not isinstance(exc, ServiceError):
        log.exception("unhandled error on POST %s", path)
    status, body, headers = error_parts(exc)
    return status, body, {"content-type": JSON, **headers}


def error_response(exc: BaseException) -> Response:
    status, body, headers = error_parts(exc)
    return Response(body, status_code=status, headers=headers, media_type=JSON)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error family through :func:`error_response`."""

    async def known(_: Request, exc: Exception) -> Response:
        return error_response(exc)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(exc)

    for family in (ServiceError, RequestValidationError, StarletteHTTPException):
        app.add_exception_handler(family, known)
    app.add_exception_handler(Exception, unexpected)


def _body(message: str) -> bytes:
    return orjson.dumps({"error": message})

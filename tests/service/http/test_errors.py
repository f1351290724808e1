"""service.http.errors: one mapping from every error family to ``{"error": message}`` answers."""

from __future__ import annotations

import orjson
import pytest
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from service import errors
from service.http.errors import error_parts, error_response


@pytest.mark.parametrize(
    ("exc", "status", "headers"),
    [
        (errors.InvalidInput("bad shape"), 400, {}),
        (errors.Unauthorized(), 401, {"WWW-Authenticate": "Bearer"}),
        (errors.Forbidden("no"), 403, {}),
        (errors.NotFound("unknown model 'x'"), 404, {}),
        (errors.PayloadTooLarge("too big"), 413, {}),
        (errors.UnsupportedMedia("br"), 415, {}),
        (errors.InferenceFailed(), 500, {}),
        (errors.Unavailable("draining", retry_after_s=3), 503, {"Retry-After": "3"}),
        (errors.Overloaded("queue is full"), 503, {"Retry-After": "1"}),
        (errors.DeadlineExceeded("late"), 504, {}),
    ],
)
def test_service_errors(exc: errors.ServiceError, status: int, headers: dict[str, str]) -> None:
    assert error_parts(exc) == (status, orjson.dumps({"error": exc.message}), headers)
    response = error_response(exc)
    assert response.status_code == status and response.media_type == "application/json"
    assert orjson.loads(response.body) == {"error": exc.message}


def test_validation_errors_are_400_naming_the_field() -> None:
    exc = RequestValidationError(
        [{"loc": ("query", "top_k"), "msg": "Input should be a valid integer", "type": "int_parsing"}]
    )
    status, body, _ = error_parts(exc)
    assert status == 400
    assert orjson.loads(body) == {"error": "query.top_k: Input should be a valid integer"}


def test_starlette_errors_keep_their_status() -> None:
    status, body, headers = error_parts(HTTPException(405, "Method Not Allowed", {"Allow": "GET"}))
    assert (status, orjson.loads(body), headers) == (405, {"error": "Method Not Allowed"}, {"Allow": "GET"})


def test_anything_else_reveals_nothing() -> None:
    status, body, headers = error_parts(KeyError("/secret/path"))
    assert (status, orjson.loads(body), headers) == (500, {"error": "internal server error"}, {})

"""The one error-kind -> gRPC status mapping: every kind mapped, Triton's codes, retry pushback."""

from __future__ import annotations

import grpc
import pytest

from service.errors import (
    DeadlineExceeded,
    ErrorKind,
    Forbidden,
    InferenceFailed,
    InsufficientStorage,
    InvalidInput,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    Unavailable,
    UnsupportedMedia,
)
from service.grpc.status import CODES, grpc_status


def test_every_error_kind_has_a_status() -> None:
    assert set(CODES) == set(ErrorKind)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInput("bad shape"), grpc.StatusCode.INVALID_ARGUMENT),
        (UnsupportedMedia("gzip only"), grpc.StatusCode.INVALID_ARGUMENT),
        (Unauthorized(), grpc.StatusCode.UNAUTHENTICATED),
        (Forbidden("invalid admin token"), grpc.StatusCode.PERMISSION_DENIED),
        (NotFound("unknown model 'x'"), grpc.StatusCode.NOT_FOUND),
        (PayloadTooLarge("too many rows"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (InsufficientStorage("feedback quota full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (InferenceFailed(), grpc.StatusCode.INTERNAL),
        (ServiceError("something generic"), grpc.StatusCode.INTERNAL),
        (Unavailable("server is draining"), grpc.StatusCode.UNAVAILABLE),
        (Overloaded("queue is full", retry_after_s=3), grpc.StatusCode.UNAVAILABLE),
        (DeadlineExceeded("deadline exceeded"), grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
def test_tritons_codes_and_the_message_as_given(error: ServiceError, code: grpc.StatusCode) -> None:
    got, message, trailers = grpc_status(error)
    assert (got, message) == (code, error.message)
    if isinstance(error, Unavailable):
        assert trailers == (("grpc-retry-pushback-ms", str(1000 * (error.retry_after_s or 0))),)
    else:
        assert trailers == ()


def test_the_runtime_failure_message_stays_generic() -> None:
    assert grpc_status(InferenceFailed())[1] == "inference failed"

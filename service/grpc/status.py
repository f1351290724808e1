"""The one mapping from the service's error kinds to gRPC status codes, as Triton answers them.

::

    invalid_argument, unsupported_media  INVALID_ARGUMENT
    unauthenticated                      UNAUTHENTICATED
    permission_denied                    PERMISSION_DENIED
    not_found                            NOT_FOUND
    too_large                            RESOURCE_EXHAUSTED  (what gRPC answers past the message limit)
    resource_exhausted                   RESOURCE_EXHAUSTED  (a full feedback quota or disk)
    unavailable, overloaded              UNAVAILABLE         + ``grpc-retry-pushback-ms`` trailer
    deadline_exceeded                    DEADLINE_EXCEEDED
    internal                             INTERNAL            (the error's generic message)
    anything not a ServiceError          INTERNAL "internal server error" (logged, never shown)

``grpc-retry-pushback-ms`` is the trailer gRPC's own retry policy honours: the HTTP ``Retry-After``.
"""

from __future__ import annotations

import grpc

from service.errors import ErrorKind, ServiceError

CODES: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.UNSUPPORTED_MEDIA: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.OVERLOADED: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
}
INTERNAL_MESSAGE = "internal server error"


def grpc_status(exc: ServiceError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """The status code, message and trailing metadata that answer ``exc``."""
    trailers: tuple[tuple[str, str], ...] = ()
    if exc.retry_after_s is not None:
        trailers = (("grpc-retry-pushback-ms", str(exc.retry_after_s * 1000)),)
    return CODES[exc.kind], exc.message, trailers

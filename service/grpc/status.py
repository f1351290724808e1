"""The one mapping from the service's error tree to gRPC status codes, as Triton answers them.

::

    InvalidInput, UnsupportedMedia   INVALID_ARGUMENT
    Unauthorized                     UNAUTHENTICATED
    Forbidden                        PERMISSION_DENIED
    NotFound                         NOT_FOUND
    PayloadTooLarge                  RESOURCE_EXHAUSTED   (what gRPC itself answers past the message limit)
    Unavailable, Overloaded          UNAVAILABLE          + ``grpc-retry-pushback-ms`` trailer
    DeadlineExceeded                 DEADLINE_EXCEEDED
    InferenceFailed, ServiceError    INTERNAL             (generic message)
    anything else                    INTERNAL "internal server error" (logged, never shown)

``grpc-retry-pushback-ms`` is the trailer gRPC's own retry policy honours: the HTTP ``Retry-After``.
"""

from __future__ import annotations

import grpc

from service.errors import (
    DeadlineExceeded,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    Unavailable,
    UnsupportedMedia,
)

_CODES: tuple[tuple[type[ServiceError], grpc.StatusCode], ...] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (UnsupportedMedia, grpc.StatusCode.INVALID_ARGUMENT),
    (Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
    (Forbidden, grpc.StatusCode.PERMISSION_DENIED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (PayloadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
)
INTERNAL_MESSAGE = "internal server error"


def grpc_status(exc: ServiceError) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """The status code, message and trailing metadata that answer ``exc``."""
    code = next((c for cls, c in _CODES if isinstance(exc, cls)), grpc.StatusCode.INTERNAL)
    trailers: tuple[tuple[str, str], ...] = ()
    retry_after = exc.headers.get("Retry-After")
    if retry_after is not None and retry_after.isdigit():
        trailers = (("grpc-retry-pushback-ms", str(int(retry_after) * 1000)),)
    return code, exc.message, trailers

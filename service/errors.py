"""The service's one error tree, shared by every transport.

Every error a request can meet is a :class:`ServiceError`. Its ``kind`` (an :class:`ErrorKind`) says
what went wrong without naming a transport: each transport maps kinds once, HTTP to the statuses below
(:mod:`service.http.errors`), gRPC to its status codes. ``status`` is the HTTP status of the class, so
the tree reads as the HTTP API documents it::

    ServiceError                    internal            500  generic message to the client
    ├── InvalidInput                invalid_argument    400  bad tensor, shape, datatype, JSON, parameter
    ├── Unauthorized                unauthenticated     401  admin or feedback call without a bearer token
    ├── Forbidden                   permission_denied   403  wrong token, or admin disabled
    ├── NotFound                    not_found           404  unknown model or version
    ├── Conflict                    failed_precondition 409  the state does not allow it (a rollout runs)
    ├── PayloadTooLarge             too_large           413  body, decompressed body, image or rows too large
    ├── UnsupportedMedia            unsupported_media   415  content encoding or image type not handled
    ├── InferenceFailed             internal            500  the runtime raised; message stays generic
    ├── InsufficientStorage         resource_exhausted  507  feedback quota or disk full
    │   └── QuotaFull               resource_exhausted  507  (service.feedback.store) a model's quota is full
    ├── Unavailable                 unavailable         503  model not ready, server draining (retry after)
    │   └── Overloaded              overloaded          503  queue full (retry after)
    └── DeadlineExceeded            deadline_exceeded   504  the request's deadline passed before compute
"""

from __future__ import annotations

from enum import StrEnum
from http import HTTPStatus

#: Longest client-given name (model, input, output) echoed in an error message; longer ones are cut, so
#: an answer stays small whatever the request (gRPC carries the message in a size-limited trailer).
ECHO_CHARS = 64


def echo(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` quoted for an error message, cut to ``limit`` characters (marked with "...")."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


class ErrorKind(StrEnum):
    """What went wrong, in transport-neutral terms (names follow gRPC's canonical codes where one fits)."""

    INVALID_ARGUMENT = "invalid_argument"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA = "unsupported_media"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"
    OVERLOADED = "overloaded"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    FAILED_PRECONDITION = "failed_precondition"


class ServiceError(Exception):
    """Base of every error answered to a client.

    ``kind`` is the transport-neutral class of the error, ``status`` its HTTP status, ``retry_after_s``
    (when set) how long a client should wait before retrying. ``headers`` are the HTTP headers the answer
    carries. 5xx messages are shown to clients as given, so never put internals in them.
    """

    kind: ErrorKind = ErrorKind.INTERNAL
    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(
        self, message: str, *, retry_after_s: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.headers: dict[str, str] = dict(headers or {})
        if retry_after_s is not None:
            self.headers["Retry-After"] = str(retry_after_s)


class InvalidInput(ServiceError):
    """The request is malformed or does not match the model's signature."""

    kind = ErrorKind.INVALID_ARGUMENT
    status = HTTPStatus.BAD_REQUEST


class Unauthorized(ServiceError):
    """An admin or feedback call came without credentials."""

    kind = ErrorKind.UNAUTHENTICATED
    status = HTTPStatus.UNAUTHORIZED

    def __init__(self, message: str = "missing bearer token") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ServiceError):
    """An admin or feedback call came with wrong credentials, or admin is disabled."""

    kind = ErrorKind.PERMISSION_DENIED
    status = HTTPStatus.FORBIDDEN


class NotFound(ServiceError):
    """The model or version named in the request is not served."""

    kind = ErrorKind.NOT_FOUND
    status = HTTPStatus.NOT_FOUND


class Conflict(ServiceError):
    """The resource's state does not allow the request (a second rollout while one runs)."""

    kind = ErrorKind.FAILED_PRECONDITION
    status = HTTPStatus.CONFLICT


class PayloadTooLarge(ServiceError):
    """Body, decompressed body, image or row count above the configured limit."""

    kind = ErrorKind.TOO_LARGE
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class UnsupportedMedia(ServiceError):
    """Content encoding or image format the service does not handle."""

    kind = ErrorKind.UNSUPPORTED_MEDIA
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class InferenceFailed(ServiceError):
    """The runtime failed while computing a batch (details go to the log only)."""

    kind = ErrorKind.INTERNAL
    status = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str = "inference failed") -> None:
        super().__init__(message)


class InsufficientStorage(ServiceError):
    """Feedback cannot be stored: the model's quota is used up or the disk is full.

    507, not 429: waiting does not help; an operator must archive feedback or raise the quota.
    """

    kind = ErrorKind.RESOURCE_EXHAUSTED
    status = HTTPStatus.INSUFFICIENT_STORAGE


class Unavailable(ServiceError):
    """The model is not ready or the server is draining; retry later."""

    kind = ErrorKind.UNAVAILABLE
    status = HTTPStatus.SERVICE_UNAVAILABLE

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, retry_after_s=retry_after_s)


class Overloaded(Unavailable):
    """The model's queue is full; the request was not admitted."""

    kind = ErrorKind.OVERLOADED


class DeadlineExceeded(ServiceError):
    """The request's deadline passed before it could be computed."""

    kind = ErrorKind.DEADLINE_EXCEEDED
    status = HTTPStatus.GATEWAY_TIMEOUT

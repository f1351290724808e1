"""The service's one error tree.

Every error a request can meet is a :class:`ServiceError`; one handler in
:mod:`service.app` turns it into ``{"error": message}`` with the class's status::

    ServiceError (500, generic message to the client)
    ├── InvalidInput        400  bad tensor, shape, datatype, JSON, parameter
    ├── Unauthorized        401  admin route without a bearer token
    ├── Forbidden           403  admin route with a wrong token, or admin disabled
    ├── NotFound            404  unknown model or version
    ├── PayloadTooLarge     413  body, decompressed body, image or row count too large
    ├── UnsupportedMedia    415  content encoding or image type not handled
    ├── InferenceFailed     500  the runtime raised; message stays generic
    ├── InsufficientStorage 507  feedback quota used up, or no disk space left to store feedback
    ├── Unavailable         503  model not ready, server draining (Retry-After)
    │   └── Overloaded      503  queue full (Retry-After)
    └── DeadlineExceeded    504  the request's deadline passed before compute
"""

from __future__ import annotations

from http import HTTPStatus


class ServiceError(Exception):
    """Base of every error answered to a client.

    ``status`` is the HTTP status; ``headers`` are added to the response.
    5xx messages are shown to clients as given, so never put internals in them.
    """

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})


class InvalidInput(ServiceError):
    """The request is malformed or does not match the model's signature."""

    status = HTTPStatus.BAD_REQUEST


class Unauthorized(ServiceError):
    """An admin route was called without credentials."""

    status = HTTPStatus.UNAUTHORIZED

    def __init__(self, message: str = "missing bearer token") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ServiceError):
    """An admin route was called with wrong credentials, or admin is disabled."""

    status = HTTPStatus.FORBIDDEN


class NotFound(ServiceError):
    """The model or version named in the request is not served."""

    status = HTTPStatus.NOT_FOUND


class PayloadTooLarge(ServiceError):
    """Body, decompressed body, image or row count above the configured limit."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class UnsupportedMedia(ServiceError):
    """Content encoding or image format the service does not handle."""

    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class InferenceFailed(ServiceError):
    """The runtime failed while computing a batch (details go to the log only)."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str = "inference failed") -> None:
        super().__init__(message)


class InsufficientStorage(ServiceError):
    """Feedback cannot be stored: the model's quota is used up or the disk is full.

    507, not 429: waiting does not help; an operator must archive feedback or raise the quota.
    """

    status = HTTPStatus.INSUFFICIENT_STORAGE


class Unavailable(ServiceError):
    """The model is not ready or the server is draining; retry later."""

    status = HTTPStatus.SERVICE_UNAVAILABLE

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class Overloaded(Unavailable):
    """The model's queue is full; the request was not admitted."""


class DeadlineExceeded(ServiceError):
    """The request's deadline passed before it could be computed."""

    status = HTTPStatus.GATEWAY_TIMEOUT

"""service.errors: the tree, its transport-neutral kinds and the HTTP status each class documents."""

from __future__ import annotations

from http import HTTPStatus

from service import errors
from service.errors import ErrorKind, ServiceError


def subclasses(cls: type[ServiceError]) -> list[type[ServiceError]]:
    return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]


def test_every_error_has_a_kind_and_a_status() -> None:
    tree = subclasses(ServiceError)
    assert len([cls for cls in tree if cls.__module__ == "service.errors"]) == 13  # Conflict: 409
    for cls in tree:
        assert isinstance(cls.kind, ErrorKind), cls
        assert isinstance(cls.status, HTTPStatus), cls


def test_a_kind_always_means_the_same_status() -> None:
    by_kind: dict[ErrorKind, set[HTTPStatus]] = {}
    for cls in subclasses(ServiceError):
        by_kind.setdefault(cls.kind, set()).add(cls.status)
    assert all(len(statuses) == 1 for statuses in by_kind.values()), by_kind
    assert set(by_kind) == set(ErrorKind)


def test_retryable_errors_say_when() -> None:
    unavailable = errors.Unavailable("model 'm' is not ready", retry_after_s=5)
    assert (unavailable.kind, unavailable.retry_after_s) == (ErrorKind.UNAVAILABLE, 5)
    assert unavailable.headers == {"Retry-After": "5"}
    overloaded = errors.Overloaded("queue full")
    assert isinstance(overloaded, errors.Unavailable) and overloaded.kind == ErrorKind.OVERLOADED
    assert overloaded.retry_after_s == 1
    assert errors.InvalidInput("x").retry_after_s is None and errors.InvalidInput("x").headers == {}


def test_a_full_feedback_store_is_507_resource_exhausted() -> None:
    full = errors.InsufficientStorage("no space left to store feedback")
    assert (full.kind, full.status) == (ErrorKind.RESOURCE_EXHAUSTED, HTTPStatus.INSUFFICIENT_STORAGE)
    assert full.retry_after_s is None, "waiting does not free a quota"


def test_defaults_for_messages_that_must_stay_generic() -> None:
    assert errors.InferenceFailed().message == "inference failed"
    unauthorized = errors.Unauthorized()
    assert unauthorized.message == "missing bearer token"
    assert unauthorized.headers == {"WWW-Authenticate": "Bearer"}
    assert str(errors.NotFound("unknown model 'x'")) == "unknown model 'x'"

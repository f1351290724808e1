"""The core's feedback operation: a client says what an image really shows, and it becomes training data.

Feedback is on only when ``SERVE_FEEDBACK_DIR`` and ``SERVE_FEEDBACK_TOKEN`` are both set. A transport
uses it like :meth:`InferenceService.call`::

    async with core.feedback_call(name, version, authorization, label) as call:  # 404, 401/403, 400 now
        image = await read_the_body(call.settings.max_body_bytes)                   # the transport's work
        receipt = await call.submit(image)                                        # FeedbackReceipt

In order: feedback must be on and the model served (404), the bearer token right (401 without one,
403 wrong; constant-time compare, never logged), the label one of the model's (400); then, in
``submit``, the image must be PNG or JPEG (415) and is classified by the serving version exactly as
``/classify`` would (413, 400), so the record says which version served it and what it answered; only
then is it stored durably (:class:`service.feedback.store.FeedbackStore`; 507 when a quota or the disk
is full).
Every outcome for a served model is counted in ``feedback_items_total`` by label and result.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import os
from types import TracebackType
from typing import Protocol

from service.core.rollout import RolloutDesk
from service.core.types import ClassifyRequest, ClassifyResponse, FeedbackReceipt, ModelInfo
from service.errors import (
    DeadlineExceeded,
    Forbidden,
    InsufficientStorage,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    Unavailable,
    UnsupportedMedia,
)
from service.feedback.store import LOG_SUFFIX, FeedbackStore, QuotaFull
from service.rollout.policy import RolloutRecord
from service.settings import Settings
from service.telemetry.metrics import Metrics
from service.telemetry.tracing import Tracing

log = logging.getLogger("service")

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


class UnknownLabel(InvalidInput):
    """The label is not one of the model's labels."""


class FeedbackHost(Protocol):
    """What a feedback call needs of the core (:class:`service.core.service.InferenceService`)."""

    settings: Settings
    metrics: Metrics
    tracing: Tracing | None
    rollout: RolloutDesk
    feedback_store: FeedbackStore | None

    @property
    def draining(self) -> bool: ...

    def model_info(self, name: str, version: int | None = None) -> ModelInfo: ...

    async def classify(
        self, name: str, request: ClassifyRequest, version: int | None = None, *, protocol: str = "http"
    ) -> ClassifyResponse: ...


def open_feedback_store(settings: Settings, metrics: Metrics) -> FeedbackStore | None:
    """The process's feedback store when feedback is on (``SERVE_FEEDBACK_DIR`` and
    ``SERVE_FEEDBACK_TOKEN``), else None. The directory must be writable (RuntimeError otherwise); the
    stored items and bytes gauges start from the logs on disk."""
    directory = settings.feedback_dir
    if directory is None:
        return None
    if not settings.feedback_enabled:
        log.warning("SERVE_FEEDBACK_DIR is set but SERVE_FEEDBACK_TOKEN is not: the feedback API is off")
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeError(f"cannot create the feedback directory {directory}: {exc.strerror}") from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise RuntimeError(f"the feedback directory {directory} is not writable by this process")
    store = FeedbackStore(
        directory, max_items=settings.feedback_max_items, max_bytes=settings.feedback_max_bytes
    )
    for log_file in sorted(directory.glob(f"*{LOG_SUFFIX}")):
        model = log_file.name.removesuffix(LOG_SUFFIX)
        try:
            usage = store.usage(model)
        except (ValueError, OSError) as exc:  # a damaged log: refused at the next write, reported now
            log.error("feedback log %s: %s", log_file, exc)
            continue
        metrics.set_feedback_usage(model, usage.items, usage.bytes)
    log.info("feedback API on, storing into %s", directory)
    return store


class FeedbackCall:
    """One feedback request (see the module docstring); ``settings`` are the service's."""

    def __init__(
        self,
        core: FeedbackHost,
        name: str,
        version: int | None,
        authorization: str | None,
        label: str,
        *,
        protocol: str = "http",
        routing_key: str | None = None,
    ) -> None:
        settings = core.settings
        self._protocol = protocol
        if core.feedback_store is None or settings.feedback_token is None:
            raise NotFound(
                "feedback is not enabled on this server (SERVE_FEEDBACK_DIR, SERVE_FEEDBACK_TOKEN)"
            )
        self._core = core
        self._store = core.feedback_store
        self._metrics = core.metrics
        info = core.model_info(name, version)  # NotFound for a model or version not served
        self.name, self.version, self.settings = info.name, info.version, settings
        self.label = label
        self._known = label if label in info.labels else None
        self._token = settings.feedback_token
        self._authorization = authorization
        self._labels = info.labels
        self._requested = version
        self._routing_key = routing_key

    async def __aenter__(self) -> FeedbackCall:
        try:
            authorize(self._authorization, self._token)
            if self._known is None:
                shown = ", ".join(self._labels[:20]) + (", ..." if len(self._labels) > 20 else "")
                raise UnknownLabel(
                    f"label {self.label[:64]!r} is not one of model '{self.name}''s labels: {shown}"
                )
        except ServiceError as exc:
            self._metrics.observe_feedback(self.name, self._known, reason_of(exc))
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self._metrics.observe_feedback(self.name, self._known, "accepted")
            usage = self._store.cached_usage(self.name)
            self._metrics.set_feedback_usage(self.name, usage.items, usage.bytes)
        elif isinstance(exc, ServiceError):
            self._metrics.observe_feedback(self.name, self._known, reason_of(exc))

    async def submit(self, image: bytes) -> FeedbackReceipt:
        """Classify ``image`` with the serving version, then store it with the label; the stored record."""
        if not image:
            raise InvalidInput("empty image")
        extension = image_extension(image)
        if self._requested is None:
            paired = self._core.rollout.paired_versions(self.name, self._routing_key)
            if paired is not None:
                return await self._submit_paired(image, extension, *paired)
        request = ClassifyRequest([image], top_k=1)
        result = await self._core.classify(self.name, request, self.version, protocol=self._protocol)
        return await self._store_unpaired(image, extension, result)

    async def _store_unpaired(
        self, image: bytes, extension: str, result: ClassifyResponse
    ) -> FeedbackReceipt:
        predicted = result.results[0].predictions[0].label
        store = functools.partial(
            self._store.store,
            self.name,
            self.label,
            image,
            extension,
            served_version=result.version,
            predicted=predicted,
        )
        tracing = self._core.tracing
        if tracing is None:
            item = await asyncio.to_thread(store)
        else:
            with tracing.child("feedback.store", {"inference.model.name": self.name}) as span:
                item = await asyncio.to_thread(store)
                span.set_attribute("feedback.id", item.id)
        return FeedbackReceipt(item.id, result.model, result.version, self.label, predicted)

    async def _submit_paired(
        self,
        image: bytes,
        extension: str,
        record: RolloutRecord,
        answering: int,
        champion: int,
        candidate: int,
    ) -> FeedbackReceipt:
        """During a rollout: score the image on both versions, store it with its lineage, count the pair."""
        request = ClassifyRequest([image], top_k=1)
        first, second = await asyncio.gather(
            self._core.classify(self.name, request, champion, protocol=self._protocol),
            self._core.classify(self.name, request, candidate, protocol=self._protocol),
            return_exceptions=True,
        )
        if isinstance(first, BaseException):
            raise first
        if isinstance(second, NotFound | Unavailable) and not self._core.draining:
            # The rollout was decided meanwhile and the candidate retired: an ordinary item.
            return await self._store_unpaired(image, extension, first)
        if isinstance(second, BaseException):
            raise second
        champion_label, candidate_label = (r.results[0].predictions[0].label for r in (first, second))
        predicted = candidate_label if answering == candidate else champion_label
        lineage = {
            "id": record.id,
            "stage": record.state,
            "champion": champion,
            "candidate": candidate,
            "champion_predicted": champion_label,
            "candidate_predicted": candidate_label,
        }
        item = await asyncio.to_thread(
            self._store.store,
            self.name,
            self.label,
            image,
            extension,
            served_version=answering,
            predicted=predicted,
            rollout=lineage,
        )
        self._core.rollout.on_paired(self.name, record, self.label, champion_label, candidate_label)
        return FeedbackReceipt(item.id, self.name, answering, self.label, predicted)


def authorize(authorization: str | None, token: str | None) -> None:
    """401 without ``Authorization: Bearer ...``, 403 with another token (compared in constant time)."""
    if authorization is None:
        raise Unauthorized()
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("expected 'Authorization: Bearer <token>'")
    if token is None or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Forbidden("invalid feedback token")


def image_extension(data: bytes) -> str:
    """``png`` or ``jpg`` from the file's magic bytes (the client's Content-Type is not trusted)."""
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpg"
    raise UnsupportedMedia("unsupported image type; send PNG or JPEG")


def reason_of(exc: ServiceError) -> str:
    """The ``result`` label of ``feedback_items_total`` for a refused item."""
    if isinstance(exc, QuotaFull):
        return exc.reason
    if isinstance(exc, InsufficientStorage):
        return "storage_full"
    if isinstance(exc, UnknownLabel):
        return "bad_label"
    if isinstance(exc, Unauthorized | Forbidden):
        return "unauthorized"
    if isinstance(exc, Unavailable | DeadlineExceeded):
        return "unavailable"
    if isinstance(exc, InvalidInput | PayloadTooLarge | UnsupportedMedia):
        return "bad_image"
    return "storage_error"

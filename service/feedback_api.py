"""``POST /v2/models/{model}/feedback?label=...``: a client says what an image really shows.

The route is off (404) unless the server has a feedback store (``SERVE_FEEDBACK_DIR`` and
``SERVE_FEEDBACK_TOKEN``). In order: the model must be served (404), the bearer token must match
(401 without one, 403 wrong; constant-time compare, never logged), the label must be one of the model's
(400), the body is read and decoded exactly as ``/classify`` reads it (413, 415, 400), the image is run
through the serving version so the record says what it answered, and only then is it stored durably
(:class:`service.feedback.FeedbackStore`; 507 when a quota or the disk is full) and answered 201.
Every outcome for a served model is counted in ``feedback_items_total``.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response

from service.api import LifecycleDep, RegistryDep, SettingsDep, _image_bytes, json_response, parse_version
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
from service.feedback import FeedbackStore, QuotaFull
from service.images import decode_image
from service.metrics import Metrics
from service.openapi import IMAGE_BODY, errors

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"

FEEDBACK_RESPONSES = {
    201: {"description": "Stored: the item's id, the version that read the image and its answer"},
    **errors(400, 401, 403, 404, 413, 415, 500, 503, 504, 507),
}

router = APIRouter()


class UnknownLabel(InvalidInput):
    """The label is not one of the model's labels (400)."""


def check_token(authorization: str | None, token: str) -> None:
    """401 without ``Authorization: Bearer ...``, 403 with another token (compared in constant time)."""
    if authorization is None:
        raise Unauthorized()
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("expected 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Forbidden("invalid feedback token")


def reason_of(exc: ServiceError) -> str:
    """The ``result`` label of ``feedback_items_total`` for a refused item."""
    if isinstance(exc, QuotaFull):
        return exc.reason
    if isinstance(exc, UnknownLabel):
        return "bad_label"
    if isinstance(exc, InsufficientStorage):
        return "storage_full"
    if isinstance(exc, Unauthorized | Forbidden):
        return "unauthorized"
    if isinstance(exc, Unavailable | DeadlineExceeded):
        return "unavailable"
    if isinstance(exc, InvalidInput | PayloadTooLarge | UnsupportedMedia):
        return "bad_image"
    return "storage_error"


def image_extension(data: bytes) -> str:
    """``png`` or ``jpg`` from the file's magic bytes (the client's Content-Type is not trusted)."""
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpg"
    raise UnsupportedMedia("unsupported image type; send PNG or JPEG")


@router.post(
    "/v2/models/{model_name}/feedback",
    status_code=201,
    responses=FEEDBACK_RESPONSES,
    openapi_extra=IMAGE_BODY,
)
@router.post(
    "/v2/models/{model_name}/versions/{version}/feedback",
    status_code=201,
    responses=FEEDBACK_RESPONSES,
    openapi_extra=IMAGE_BODY,
)
async def feedback(
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    lifecycle: LifecycleDep,
    model_name: str,
    label: Annotated[str, Query(min_length=1, max_length=256, description="The right label")],
    version: str | None = None,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    store: FeedbackStore | None = request.app.state.feedback
    if store is None or settings.feedback_token is None:
        raise NotFound("feedback is not enabled on this server (SERVE_FEEDBACK_DIR, SERVE_FEEDBACK_TOKEN)")
    served = registry.get(model_name, parse_version(version))
    metrics: Metrics = request.app.state.metrics
    labels = served.runtime.labels
    known = label if label in labels else None
    try:
        check_token(authorization, settings.feedback_token)
        if known is None:
            shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
            raise UnknownLabel(f"label {label[:64]!r} is not one of model '{model_name}''s labels: {shown}")
        if lifecycle.draining:
            raise Unavailable("server is draining")
        spec = served.runtime.signature.inputs[0]
        if len(spec.shape) != 4 or spec.shape[3] not in (1, 3):
            raise InvalidInput(f"model '{model_name}' does not take images (input shape {list(spec.shape)})")
        data = await _image_bytes(request, settings.max_body_bytes)
        extension = image_extension(data)
        _, height, width, channels = spec.shape
        image = decode_image(
            data, height=height, width=width, channels=channels, max_pixels=settings.max_image_pixels
        )
        outputs = await served.batcher.submit(
            {spec.name: image.astype(spec.dtype, copy=False)},
            deadline=time.monotonic() + settings.default_timeout_s,
        )
        probabilities = outputs[served.runtime.signature.outputs[0].name][0]
        best = int(np.argmax(probabilities))
        predicted = labels[best] if best < len(labels) else str(best)
        item = await asyncio.to_thread(
            store.store,
            model_name,
            label,
            data,
            extension,
            served_version=served.version,
            predicted=predicted,
        )
    except ServiceError as exc:
        metrics.observe_feedback(model_name, known, reason_of(exc))
        raise
    metrics.observe_feedback(model_name, label, "accepted")
    usage = store.cached_usage(model_name)
    metrics.set_feedback_usage(model_name, usage.items, usage.bytes)
    return json_response(
        {
            "id": item.id,
            "model_name": served.name,
            "model_version": str(served.version),
            "label": label,
            "predicted": predicted,
        },
        status_code=201,
    )

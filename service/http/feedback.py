"""``POST /v2/models/{model}/feedback?label=...``: the HTTP adapter of the core's feedback operation.

Same body forms and limits as ``/classify`` (a raw PNG or JPEG, or the multipart field ``file``);
``Authorization: Bearer <token>``; 201 with the stored item's id. The rules are the core's
(:mod:`service.core.feedback`); the body is only read once the token and the label passed.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response

from service.http.body import read_images
from service.http.openapi import IMAGE_BODY, errors
from service.http.paths import url_version
from service.http.routes import CoreDep, json_response

FEEDBACK_RESPONSES = {
    201: {"description": "Stored: the item's id, the version that read the image and its answer"},
    **errors(400, 401, 403, 404, 413, 415, 500, 503, 504, 507),
}

router = APIRouter()


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
    core: CoreDep,
    model_name: str,
    label: Annotated[str, Query(min_length=1, max_length=256, description="The right label")],
    version: str | None = None,
    authorization: Annotated[str | None, Header()] = None,
    x_routing_key: Annotated[str | None, Header(max_length=256)] = None,
) -> Response:
    async with core.feedback_call(
        model_name, url_version(version), authorization, label, routing_key=x_routing_key
    ) as call:
        ((_, image),) = await read_images(request, call.settings.max_body_bytes, max_files=1)
        receipt = await call.submit(image)
    return json_response(
        {
            "id": receipt.id,
            "model_name": receipt.model,
            "model_version": str(receipt.version),
            "label": receipt.label,
            "predicted": receipt.predicted,
        },
        status_code=201,
    )

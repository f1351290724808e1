"""``POST /v2/models/{model}[/versions/{v}]/explain``: the HTTP adapter of the core's explain operation.

The body is one image as ``/classify`` takes it (a raw PNG or JPEG, or the multipart field ``file``) or
a V2 infer request holding one image tensor ``[1, H, W, C]`` (``Content-Type: application/json``, or
``application/octet-stream`` with Triton's binary tensor header), whose ``parameters.timeout`` is the
explanation's deadline. The query names the method and its parameters; JSON answers, or with
``?format=png`` the heat map over the image (:mod:`service.images.heatmap`). The rules are the core's
(:mod:`service.core.explain`); the method's description is docs/explain.md.

The explanation runs as a task beside a watcher on the connection: a client that goes away cancels it,
and with it every row not yet computing. There is no gRPC counterpart (Triton's protocol has none).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.types import Receive

from service.core import ExplainCall, ExplainRequest, Explanation
from service.errors import InvalidInput
from service.http.body import decode_body, read_body, read_images
from service.http.openapi import IMAGE_BODY, INFER_BODY, errors
from service.http.paths import url_version
from service.http.protocol import parse_infer_request
from service.http.routes import CoreDep, json_response
from service.images.heatmap import overlay_png

_CONTENT: dict[str, Any] = {**IMAGE_BODY["requestBody"]["content"], **INFER_BODY["requestBody"]["content"]}  # type: ignore[dict-item]
EXPLAIN_BODY = {"requestBody": {"required": True, "content": _CONTENT}}
EXPLAIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The attribution as JSON, or with format=png the heat map over the image",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["model_name", "model_version", "label", "class_id", "score", "attribution"],
                    "properties": {
                        "model_name": {"type": "string"},
                        "model_version": {"type": "string"},
                        "label": {"type": "string"},
                        "class_id": {"type": "integer"},
                        "score": {"type": "number"},
                        "method": {"type": "string", "enum": ["occlusion", "rise"]},
                        "parameters": {"type": "object"},
                        "rows": {"type": "integer"},
                        "milliseconds": {"type": "number"},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                        "attribution": {
                            "type": "array",
                            "description": "H rows of W numbers: the score drop when the pixel is hidden",
                            "items": {"type": "array", "items": {"type": "number"}},
                        },
                    },
                }
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    **errors(400, 404, 413, 415, 500, 503, 504),
}
#: Answered when the client went away before the explanation finished (nobody reads it; nginx's code).
CLIENT_CLOSED = 499

router = APIRouter()


@router.post("/v2/models/{model_name}/explain", responses=EXPLAIN_RESPONSES, openapi_extra=EXPLAIN_BODY)
@router.post(
    "/v2/models/{model_name}/versions/{version}/explain",
    responses=EXPLAIN_RESPONSES,
    openapi_extra=EXPLAIN_BODY,
)
async def explain(
    request: Request,
    core: CoreDep,
    model_name: str,
    version: str | None = None,
    method: Annotated[
        Literal["occlusion", "rise"],
        Query(description="occlusion: a sliding patch; rise: random masks (docs/explain.md)"),
    ] = "occlusion",
    patch: Annotated[
        int | None,
        Query(
            ge=1,
            le=4096,
            description="occlusion: patch side in pixels, at most the input's shorter "
            "side; default a seventh of it (4 for 28x28)",
        ),
    ] = None,
    stride: Annotated[
        int | None,
        Query(
            ge=1,
            le=4096,
            description="occlusion: step between patches, at most the patch; default half the patch",
        ),
    ] = None,
    masks: Annotated[int, Query(ge=2, le=1_000_000, description="rise: number of random masks")] = 1000,
    grid: Annotated[
        int,
        Query(
            ge=2,
            le=64,
            description="rise: cells per side of a mask (at most 64 and the input's shorter side)",
        ),
    ] = 7,
    seed: Annotated[int, Query(ge=0, le=2**32 - 1, description="rise: seed of the masks")] = 0,
    label: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=256,
            description="The class to explain (a label or a class index); default the top-1",
        ),
    ] = None,
    output: Annotated[
        Literal["json", "png"],
        Query(alias="format", description="json: the attribution; png: the heat map over the image"),
    ] = "json",
) -> Response:
    """Which pixels made the model's score for one class: an ``(H, W)`` attribution in the model's input
    coordinates, the class's score drop when the pixel is hidden (docs/explain.md)."""
    options: dict[str, Any] = {"method": method, "patch": patch, "stride": stride, "masks": masks}
    options |= {"grid": grid, "seed": seed, "label": label}

    body_read = asyncio.Event()

    async def work() -> Explanation:
        async with core.explain_call(model_name, url_version(version)) as call:
            explain_request = await _request(request, call, options)
            body_read.set()
            return await call.explain(explain_request)

    answer = await _unless_disconnected(request.receive, body_read, work())
    if answer is None:
        return Response(status_code=CLIENT_CLOSED)
    if output == "png":
        png = await asyncio.to_thread(overlay_png, answer.input, answer.attribution, answer.preprocessing)
        headers = {"X-Explained-Label": _header(answer.label), "X-Explained-Score": f"{answer.score:.6g}"}
        return Response(png, media_type="image/png", headers=headers)
    return json_response(
        {
            "model_name": answer.model,
            "model_version": str(answer.version),
            "label": answer.label,
            "class_id": answer.class_id,
            "score": answer.score,
            "method": answer.method,
            "parameters": dict(answer.parameters),
            "rows": answer.rows,
            "milliseconds": round(answer.milliseconds, 3),
            "shape": list(answer.attribution.shape),
            "attribution": answer.attribution.astype(np.float32).tolist(),
        }
    )


async def _request(request: Request, call: ExplainCall, options: dict[str, Any]) -> ExplainRequest:
    """The core's request from the body: a V2 infer request (JSON or binary) or one image."""
    settings = call.settings
    call.check_explainable()
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("application/json", "application/octet-stream")):
        ((_, image),) = await read_images(request, settings.max_body_bytes, max_files=1)
        return ExplainRequest(image=image, **options)
    body = await read_body(request, settings.max_body_bytes)
    body = decode_body(body, request.headers.get("content-encoding"), max_bytes=settings.max_body_bytes)
    parsed = parse_infer_request(
        body,
        header_length=request.headers.get("inference-header-content-length"),
        signature=call.signature,
        max_rows=settings.max_request_rows,
    )
    tensor = parsed.inputs[call.signature.inputs[0].name]
    if len(tensor) != 1:
        raise InvalidInput(f"an explanation takes one image; the request has {len(tensor)} rows")
    deadline = None if parsed.timeout is None else time.monotonic() + parsed.timeout
    return ExplainRequest(input=tensor[0], deadline=deadline, **options)


async def _unless_disconnected(
    receive: Receive, body_read: asyncio.Event, work: Coroutine[Any, Any, Explanation]
) -> Explanation | None:
    """``await work``, or cancel it and return None as soon as the client disconnects; the connection
    is watched once ``work`` has read the body (``body_read``), so the two never share ``receive``."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(receive, body_read))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if task.cancelled() or not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    return task.result()


async def _disconnect(receive: Receive, body_read: asyncio.Event) -> None:
    """Return when the client disconnects (after the body: nothing else can arrive)."""
    await body_read.wait()
    while (await receive())["type"] != "http.disconnect":
        pass


def _header(text: str) -> str:
    """``text`` as a header value: printable ASCII, escaped otherwise."""
    return text.encode("ascii", "backslashreplace").decode("ascii").replace("\r", " ").replace("\n", " ")

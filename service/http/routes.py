"""HTTP routes: the KServe V2 REST protocol, Triton's extensions, /classify and /metrics.

Each route parses what HTTP carries (path, query, headers, body), calls the core
(:class:`service.core.InferenceService`) and shapes its answer as JSON. Every failure is a
:class:`service.errors.ServiceError`, answered by the one mapping in :mod:`service.http.errors`.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.core import ClassifyRequest, InferenceService, ModelInfo
from service.http.body import read_body, read_images, unless_disconnected
from service.http.infer import answer_infer
from service.http.openapi import CLASSIFY_RESPONSES, IMAGE_BODY, INFER_BODY, INFER_RESPONSES, errors
from service.http.paths import url_version

JSON = "application/json"


async def _core(request: Request) -> InferenceService:
    core: InferenceService = request.app.state.core
    return core


CoreDep = Annotated[InferenceService, Depends(_core)]

router = APIRouter()


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type=JSON)


def model_metadata(info: ModelInfo) -> dict[str, Any]:
    """The V2 model metadata document, with the service's additions under ``parameters``."""
    return {
        "name": info.name,
        "versions": [str(v) for v in info.versions],
        "platform": info.platform,
        "inputs": [t.as_json() for t in info.signature.inputs],
        "outputs": [t.as_json() for t in info.signature.outputs],
        "parameters": {
            "version": str(info.version),
            "provider": info.provider,
            "labels": list(info.labels),
            "max_batch_size": info.max_batch_size,
            "preprocessing": info.preprocessing.model_dump(mode="json"),
            # Whether POST .../feedback is on (the page offers "Wrong? It was: ..." only then).
            "feedback": info.feedback,
        },
    }


# ---- health and server metadata ------------------------------------------------------------------


@router.get("/v2/health/live")
async def live() -> Response:
    return json_response({"live": True})


@router.get("/v2/health/ready", responses=errors(503))
async def ready(core: CoreDep) -> Response:
    core.check_ready()
    return json_response({"ready": True})


@router.get("/v2")
async def server_metadata(core: CoreDep) -> Response:
    info = core.server_info()
    return json_response({"name": info.name, "version": info.version, "extensions": list(info.extensions)})


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(core: CoreDep) -> Response:
    return Response(generate_latest(core.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# ---- model metadata, readiness, statistics ---------------------------------------------------------


def _stats(core: InferenceService, name: str | None = None, version: str | None = None) -> Response:
    rows = core.statistics(name, url_version(version)) if name is not None else core.statistics()
    return json_response({"model_stats": [r.stats.as_json(r.name, str(r.version)) for r in rows]})


@router.get("/v2/models/stats")
async def all_stats(core: CoreDep) -> Response:
    return _stats(core)


@router.get("/v2/models")
async def list_models(core: CoreDep) -> Response:
    """The models served now, each as ``GET /v2/models/{m}`` describes it (without ``lineage``)."""
    return json_response({"models": [model_metadata(info) for info in core.models()]})


@router.get("/v2/models/{model_name}", responses=errors(400, 404, 503))
@router.get("/v2/models/{model_name}/versions/{version}", responses=errors(400, 404, 503))
async def get_model(core: CoreDep, model_name: str, version: str | None = None) -> Response:
    document = model_metadata(core.model_info(model_name, url_version(version)))
    document["parameters"]["lineage"] = core.lineage(model_name, url_version(version))  # docs/rollout.md
    return json_response(document)


@router.get("/v2/models/{model_name}/ready", responses=errors(400, 404, 503))
@router.get("/v2/models/{model_name}/versions/{version}/ready", responses=errors(400, 404, 503))
async def model_ready(core: CoreDep, model_name: str, version: str | None = None) -> Response:
    name, served = core.check_model_ready(model_name, url_version(version))
    return json_response({"name": name, "version": str(served), "ready": True})


@router.get("/v2/models/{model_name}/stats", responses=errors(400, 404, 503))
@router.get("/v2/models/{model_name}/versions/{version}/stats", responses=errors(400, 404, 503))
async def model_stats(core: CoreDep, model_name: str, version: str | None = None) -> Response:
    return _stats(core, model_name, version)


# ---- inference -------------------------------------------------------------------------------------


@router.post("/v2/models/{model_name}/infer", responses=INFER_RESPONSES, openapi_extra=INFER_BODY)
@router.post(
    "/v2/models/{model_name}/versions/{version}/infer", responses=INFER_RESPONSES, openapi_extra=INFER_BODY
)
async def infer(request: Request, core: CoreDep, model_name: str, version: str | None = None) -> Response:
    """KServe V2 inference, JSON or binary tensors. Answered by :mod:`service.http.dispatch` in the
    running app; this route documents it and answers when the app is built without the fast path."""
    content, headers = await answer_infer(
        core, model_name, version, request.headers, lambda limit: read_body(request, limit)
    )
    return Response(content, headers=headers)


@router.post("/v2/models/{model_name}/classify", responses=CLASSIFY_RESPONSES, openapi_extra=IMAGE_BODY)
@router.post(
    "/v2/models/{model_name}/versions/{version}/classify",
    responses=CLASSIFY_RESPONSES,
    openapi_extra=IMAGE_BODY,
)
async def classify(
    request: Request,
    core: CoreDep,
    model_name: str,
    version: str | None = None,
    top_k: Annotated[int, Query(ge=1, le=1000)] = 3,
    return_input: bool = False,
    x_routing_key: Annotated[str | None, Header(max_length=256)] = None,
) -> Response:
    """Top-k labels for one image (the raw body, or one multipart ``file``) or several (repeated
    ``file`` parts), preprocessed as the model's metadata declares and computed as one request of N rows.
    ``results`` answers each image in order (with the model's ``input`` when ``return_input``); a single
    image is also answered by ``predictions`` at the top level."""
    async with core.call(model_name, url_version(version), routing_key=x_routing_key) as call:
        files = await read_images(request, call.settings.max_body_bytes, call.settings.max_request_rows)
        request_ = ClassifyRequest(
            [data for _, data in files],
            top_k,
            return_input=return_input,
            filenames=[name for name, _ in files],
        )
        answer = await unless_disconnected(request.receive, call.classify(request_))
    results = []
    for result in answer.results:
        item: dict[str, Any] = {"filename": result.filename} if result.filename else {}
        item["predictions"] = [
            {"class_id": p.class_id, "label": p.label, "probability": p.probability}
            for p in result.predictions
        ]
        if result.input is not None:
            item["input"] = result.input.ravel().tolist()
        results.append(item)
    body: dict[str, Any] = {"model_name": answer.model, "model_version": str(answer.version)}
    if len(results) == 1:
        body["predictions"] = results[0]["predictions"]
    return json_response({**body, "results": results})


# ---- repository extension (index here; load/unload are admin routes) -------------------------------


@router.post("/v2/repository/index")
async def repository_index(core: CoreDep) -> Response:
    rows = core.repository_index()
    return json_response(
        [{"name": r.name, "version": str(r.version), "state": r.state, "reason": r.reason} for r in rows]
    )


async def require_admin(core: CoreDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """Admin routes need ``Authorization: Bearer <token>``; the core checks it in constant time."""
    core.authorize_admin(authorization)


AdminDep = Annotated[None, Depends(require_admin)]


@router.post("/v2/repository/models/{model_name}/load", responses=errors(401, 403, 404, 503))
async def load_model(core: CoreDep, _: AdminDep, model_name: str) -> Response:
    versions = await core.load(model_name)
    return json_response({"name": model_name, "versions": [str(v) for v in versions]})


@router.post("/v2/repository/models/{model_name}/unload", responses=errors(401, 403, 404))
async def unload_model(core: CoreDep, _: AdminDep, model_name: str) -> Response:
    await core.unload(model_name)
    return json_response({"name": model_name, "versions": []})

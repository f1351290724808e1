"""HTTP routes: the KServe V2 REST protocol, Triton's extensions, and /classify.

Routes stay thin: read the body, call the protocol parser, the registry and the batcher, shape the
response. Every failure is a :class:`service.errors.ServiceError`, answered by the one handler in
:mod:`service.app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import Message, Receive

from service import __version__, repository
from service.errors import (
    DeadlineExceeded,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    Unavailable,
)
from service.metrics import Metrics
from service.openapi import CLASSIFY_RESPONSES, IMAGE_BODY, INFER_BODY, INFER_RESPONSES, errors
from service.preprocess import model_preprocessing, prepare_all
from service.protocol import decode_body, encode_infer_response, parse_infer_request
from service.registry import ModelRegistry, ServedVersion
from service.settings import Settings

JSON = "application/json"


class Lifecycle:
    """Process state the routes consult: draining begins on SIGTERM, before the server stops.

    ``deadline`` (``time.monotonic()`` seconds) is when the drain must be over, once one has begun.
    """

    def __init__(self) -> None:
        self.draining = False
        self.deadline: float | None = None

    def time_left(self, default: float) -> float:
        """Seconds until the drain deadline; ``default`` when no drain has set one."""
        return default if self.deadline is None else max(0.0, self.deadline - time.monotonic())


async def _registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _lifecycle(request: Request) -> Lifecycle:
    lifecycle: Lifecycle = request.app.state.lifecycle
    return lifecycle


RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
SettingsDep = Annotated[Settings, Depends(_settings)]
LifecycleDep = Annotated[Lifecycle, Depends(_lifecycle)]

router = APIRouter()


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type=JSON)


def parse_version(version: str | None) -> int | None:
    """The version named in a URL (None: newest); 400 unless it is a canonical positive integer."""
    if version is None:
        return None
    parsed = repository.parse_version(version)
    if parsed is None:
        raise InvalidInput(f"model version must be a positive integer, got '{version[:32]}'")
    return parsed


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes without reading it all."""
    return await read_asgi_body(request.receive, request.headers.get("content-length"), limit)


async def read_asgi_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The body from ASGI ``receive``, refusing (413) more than ``limit`` bytes, declared or sent."""
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise InvalidInput("invalid Content-Length header")
        if int(declared) > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInput("client disconnected before sending the whole body")
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def status_label(exc: ServiceError) -> str:
    """The ``status`` label of ``inference_requests_total`` for a failed request."""
    if isinstance(exc, DeadlineExceeded):
        return "timeout"
    if isinstance(exc, Unavailable):
        return "rejected"
    if exc.status >= 500:
        return "error"
    return "bad_request"


def model_metadata(served: ServedVersion, versions: list[int], max_batch_size: int) -> dict[str, Any]:
    runtime = served.runtime
    spec = runtime.signature.inputs[0]
    extra: dict[str, Any] = {}
    if len(spec.shape) == 4 and spec.shape[3] in (1, 3):  # an image model: what /classify does to uploads
        with contextlib.suppress(ServiceError):  # an invalid entry: /classify answers why
            extra["preprocessing"] = model_preprocessing(
                runtime.name, runtime.metadata.raw, spec.shape
            ).model_dump()
    return {
        "name": runtime.name,
        "versions": [str(v) for v in versions],
        "platform": "onnxruntime_onnx",
        "inputs": [t.as_json() for t in runtime.signature.inputs],
        "outputs": [t.as_json() for t in runtime.signature.outputs],
        "parameters": {
            "version": str(runtime.version),
            "provider": runtime.provider,
            "labels": list(runtime.labels),
            "max_batch_size": max_batch_size,
            **extra,
        },
    }


# ---- health and server metadata ------------------------------------------------------------------


@router.get("/v2/health/live")
async def live() -> Response:
    return json_response({"live": True})


@router.get("/v2/health/ready", responses=errors(503))
async def ready(registry: RegistryDep, lifecycle: LifecycleDep) -> Response:
    if lifecycle.draining:
        raise Unavailable("server is draining")
    if not registry.loaded:
        raise Unavailable("models are still loading")
    if not registry.ready:
        missing = [n for n in registry.names() if not registry.versions(n)]
        raise Unavailable(f"models not ready: {', '.join(missing)}")
    return json_response({"ready": True})


@router.get("/v2")
async def server_metadata() -> Response:
    return json_response(
        {
            "name": "digits-serving",
            "version": __version__,
            "extensions": ["binary_tensor_data", "statistics", "model_repository", "classification"],
        }
    )


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    registry_metrics: Metrics = request.app.state.metrics
    return Response(generate_latest(registry_metrics.registry), media_type=CONTENT_TYPE_LATEST)


# ---- model metadata, readiness, statistics ---------------------------------------------------------


@router.get("/v2/models/stats")
async def all_stats(registry: RegistryDep) -> Response:
    rows = [
        registry.get(name, v).metrics.stats.as_json(name, str(v))
        for name in registry.names()
        for v in registry.versions(name)
    ]
    return json_response({"model_stats": rows})


@router.get("/v2/models/{model_name}", responses=errors(400, 404, 503))
@router.get("/v2/models/{model_name}/versions/{version}", responses=errors(400, 404, 503))
async def get_model(
    registry: RegistryDep, settings: SettingsDep, model_name: str, version: str | None = None
) -> Response:
    served = registry.get(model_name, parse_version(version))
    return json_response(model_metadata(served, registry.versions(model_name), settings.max_batch_size))


@router.get("/v2/models/{model_name}/ready", responses=errors(400, 404, 503))
@router.get("/v2/models/{model_name}/versions/{version}/ready", responses=errors(400, 404, 503))
async def model_ready(
    registry: RegistryDep, lifecycle: LifecycleDep, model_name: str, version: str | None = None
) -> Response:
    served = registry.get(model_name, parse_version(version))
    if lifecycle.draining:
        raise Unavailable("server is draining")
    return json_response({"name": served.name, "version": str(served.version), "ready": True})


@router.get("/v2/models/{model_name}/stats", responses=errors(400, 404, 503))
@router.get("/v2/models/{model_name}/versions/{version}/stats", responses=errors(400, 404, 503))
async def model_stats(registry: RegistryDep, model_name: str, version: str | None = None) -> Response:
    wanted = parse_version(version)
    registry.get(model_name, wanted)  # 404/503 for unknown models and versions
    versions = [wanted] if wanted is not None else registry.versions(model_name)
    rows = [registry.get(model_name, v).metrics.stats.as_json(model_name, str(v)) for v in versions]
    return json_response({"model_stats": rows})


# ---- inference -------------------------------------------------------------------------------------


async def run_infer(
    state: Any,
    model_name: str,
    version: str | None,
    headers: Mapping[str, str],
    read: Callable[[int], Awaitable[bytes]],
) -> tuple[bytes, dict[str, str]]:
    """The whole infer request, transport aside: returns the response body and headers.

    Shared by the documented FastAPI route and the ASGI fast path (:mod:`service.fastpath`).
    ``read(limit)`` returns the raw body or raises PayloadTooLarge past ``limit`` bytes.
    """
    started = time.perf_counter()
    registry: ModelRegistry = state.registry
    settings: Settings = state.settings
    served = registry.get(model_name, parse_version(version))
    try:
        if state.lifecycle.draining:
            raise Unavailable("server is draining")
        body = await read(settings.max_body_bytes)
        body = decode_body(body, headers.get("content-encoding"), max_bytes=settings.max_body_bytes)
        signature = served.runtime.signature
        parsed = parse_infer_request(
            body,
            header_length=headers.get("inference-header-content-length"),
            signature=signature,
            max_rows=settings.max_request_rows,
        )
        timeout_s = parsed.timeout_us / 1e6 if parsed.timeout_us else settings.default_timeout_s
        outputs = await served.batcher.submit(parsed.inputs, deadline=time.monotonic() + timeout_s)
        response = encode_infer_response(
            model_name=served.name,
            model_version=str(served.version),
            request_id=parsed.id,
            outputs=outputs,
            request=parsed,
            signature=signature,
        )
    except ServiceError as exc:
        served.metrics.observe_request(status_label(exc), time.perf_counter() - started)
        raise
    served.metrics.observe_request("ok", time.perf_counter() - started)
    return response


@router.post("/v2/models/{model_name}/infer", responses=INFER_RESPONSES, openapi_extra=INFER_BODY)
@router.post(
    "/v2/models/{model_name}/versions/{version}/infer", responses=INFER_RESPONSES, openapi_extra=INFER_BODY
)
async def infer(request: Request, model_name: str, version: str | None = None) -> Response:
    """KServe V2 inference, JSON or binary tensors. Served by :mod:`service.fastpath` in the running app;
    this route documents it and answers when the app is used without that front."""
    content, headers = await run_infer(
        request.app.state, model_name, version, request.headers, lambda limit: read_body(request, limit)
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
    registry: RegistryDep,
    settings: SettingsDep,
    lifecycle: LifecycleDep,
    model_name: str,
    version: str | None = None,
    top_k: Annotated[int, Query(ge=1, le=1000)] = 3,
    return_input: bool = False,
) -> Response:
    """Top-k labels for one image (the raw body, or one multipart ``file``) or several (repeated
    ``file`` parts), preprocessed as the model's metadata declares and computed as one request of N rows.
    ``results`` answers each image in order (with the model's ``input`` when ``return_input``); a single
    image is also answered by ``predictions`` at the top level."""
    started = time.perf_counter()
    served = registry.get(model_name, parse_version(version))
    try:
        if lifecycle.draining:
            raise Unavailable("server is draining")
        spec = served.runtime.signature.inputs[0]
        if len(spec.shape) != 4 or spec.shape[3] not in (1, 3):
            raise InvalidInput(f"model '{model_name}' does not take images (input shape {list(spec.shape)})")
        preprocessing = model_preprocessing(served.name, served.runtime.metadata.raw, spec.shape)
        files = await _image_files(request, settings)
        # Milliseconds of decoding and numpy per image (bench/preprocess.py): kept off the event loop.
        batch = await asyncio.to_thread(
            prepare_all, files, preprocessing, max_pixels=settings.max_image_pixels
        )
        outputs = await served.batcher.submit(
            {spec.name: batch.astype(spec.dtype, copy=False)},
            deadline=time.monotonic() + settings.default_timeout_s,
        )
        probabilities = outputs[served.runtime.signature.outputs[0].name]
    except ServiceError as exc:
        served.metrics.observe_request(status_label(exc), time.perf_counter() - started)
        raise
    served.metrics.observe_request("ok", time.perf_counter() - started)
    results = []
    for (filename, _), row, inputs in zip(files, probabilities, batch, strict=True):
        result: dict[str, Any] = {"filename": filename} if filename else {}
        result["predictions"] = _top(row, served.runtime.labels, top_k)
        if return_input:
            result["input"] = inputs.ravel().tolist()
        results.append(result)
    body: dict[str, Any] = {"model_name": served.name, "model_version": str(served.version)}
    if len(results) == 1:
        body["predictions"] = results[0]["predictions"]
    return json_response({**body, "results": results})


def _top(probabilities: np.ndarray, labels: tuple[str, ...], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [
        {
            "class_id": int(i),
            "label": labels[i] if i < len(labels) else str(i),
            "probability": float(probabilities[i]),
        }
        for i in order
    ]


async def _image_files(request: Request, settings: Settings) -> list[tuple[str | None, bytes]]:
    """(file name, bytes) of each uploaded image, in order: the raw body, or every multipart ``file``."""
    data = await read_body(request, settings.max_body_bytes)  # the whole form is bounded, not each part
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        if not data:
            raise InvalidInput("empty image")
        return [(None, data)]
    limit = settings.max_request_rows

    async def replay() -> AsyncGenerator[bytes, None]:
        yield data

    parser = MultiPartParser(
        request.headers, replay(), max_files=limit, max_fields=8, max_part_size=len(data)
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise PayloadTooLarge(f"more than {limit} images in one request") from None
        raise InvalidInput(f"invalid multipart body: {exc.message}") from None
    except Exception as exc:  # python-multipart's errors carry no common base worth naming
        raise InvalidInput(f"invalid multipart body: {exc}") from exc
    try:
        uploads = form.getlist("file")
        if not uploads or any(isinstance(upload, str) for upload in uploads):
            raise InvalidInput("multipart body has no file field named 'file'")
        files = [(upload.filename, await upload.read()) for upload in uploads if not isinstance(upload, str)]
    finally:
        await form.close()
    for n, (_, content) in enumerate(files, 1):
        if not content:
            raise InvalidInput("empty image" if len(files) == 1 else f"image {n} of {len(files)} is empty")
    return files


# ---- repository extension (index here; load/unload are admin routes) -------------------------------


@router.post("/v2/repository/index")
async def repository_index(registry: RegistryDep) -> Response:
    return json_response(registry.index())


async def require_admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    """Constant-time bearer token check; admin routes are refused when no token is configured."""
    token: str | None = request.app.state.settings.admin_token
    if token is None:
        raise Forbidden("the admin API is disabled (no SERVE_ADMIN_TOKEN configured)")
    if authorization is None:
        raise Unauthorized()
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("expected 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Forbidden("invalid admin token")


AdminDep = Annotated[None, Depends(require_admin)]


@router.post("/v2/repository/models/{model_name}/load", responses=errors(401, 403, 404, 503))
async def load_model(registry: RegistryDep, _: AdminDep, model_name: str) -> Response:
    await registry.load(model_name)
    return json_response({"name": model_name, "versions": [str(v) for v in registry.versions(model_name)]})


@router.post("/v2/repository/models/{model_name}/unload", responses=errors(401, 403, 404))
async def unload_model(registry: RegistryDep, _: AdminDep, model_name: str) -> Response:
    if model_name not in registry.names():
        raise NotFound(f"unknown model '{model_name}'")
    await registry.unload(model_name)
    return json_response({"name": model_name, "versions": []})

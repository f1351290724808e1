"""Application factory: ``create_app(settings)`` builds the FastAPI app; nothing happens at import.

Sessions, batchers, the repository watcher and (when asked for) the gRPC listener start in the lifespan
and are drained after its ``yield``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api import Lifecycle, router
from service.errors import ServiceError
from service.fastpath import ServingApp
from service.grpc.server import GrpcServer
from service.metrics import Metrics
from service.openapi import refine
from service.registry import ModelRegistry
from service.runtime import select_providers
from service.settings import Settings

log = logging.getLogger("service")
STATIC = Path(__file__).parent / "static"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"error": message}), status_code=status, headers=headers, media_type="application/json"
    )


def install_error_handlers(app: FastAPI) -> None:
    """One handler per error family, all answering ``{"error": message}``."""

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> Response:
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return _error(HTTPStatus.BAD_REQUEST, "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal server error")


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    background_load: bool = False,
    grpc_host: str | None = None,
    grpc_reuse_port: bool = False,
) -> FastAPI:
    """Build the service. ``registry`` defaults to a fresh one with process metrics.

    With ``background_load`` the server answers (live, not ready) while models load, as a process under
    an orchestrator should; without it start-up waits for the initial load, as tests and embedders want.
    With ``grpc_host`` the lifespan also serves gRPC on ``grpc_host:settings.grpc_port`` (unless that is
    0), in the same event loop and over the same batchers; the bound port is ``app.state.grpc_port``.
    """
    if registry is None:
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    metrics = Metrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        providers = select_providers(settings.providers)
        log.info("settings: %s", settings.describe())
        log.info("execution providers: %s", ", ".join(providers))
        models = ModelRegistry(settings, metrics, providers)
        app.state.registry = models
        grpc_server = None
        if grpc_host is not None and settings.grpc_port:
            grpc_server = GrpcServer(app.state, settings, reuse_port=grpc_reuse_port)
            app.state.grpc_port = await grpc_server.start(grpc_host, settings.grpc_port)
        if background_load:
            loader = asyncio.create_task(_load_then_watch(models, settings.poll_interval_s))
        else:
            await models.start()
            loader = asyncio.create_task(_watch(models, settings.poll_interval_s))
        try:
            yield
        finally:
            app.state.lifecycle.draining = True
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            if grpc_server is not None:
                await grpc_server.stop(app.state.lifecycle.time_left(settings.drain_seconds))
            await models.stop(app.state.lifecycle.time_left(settings.drain_seconds))

    app = ServingApp(
        title="digits-serving",
        description="KServe V2 inference for ONNX image classifiers, with dynamic batching.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.lifecycle = Lifecycle()
    install_error_handlers(app)
    app.include_router(router)
    refine(app)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _load_then_watch(models: ModelRegistry, interval: float) -> None:
    try:
        await models.start()
    except Exception:
        log.exception("initial model load failed")
    await _watch(models, interval)


async def _watch(models: ModelRegistry, interval: float) -> None:
    """Rescan the repository every ``interval`` seconds (0: never); a failed scan is logged, never fatal."""
    if interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        try:
            await models.sync()
        except Exception:
            log.exception("repository scan failed")

"""Application factory: ``create_app(settings)`` builds the FastAPI app; nothing happens at import.

Sessions, batchers and the repository watcher start in the lifespan and are drained after its
``yield``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
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
from service.feedback import FeedbackStore
from service.feedback_api import router as feedback_router
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
    settings: Settings, *, registry: CollectorRegistry | None = None, background_load: bool = False
) -> FastAPI:
    """Build the service. ``registry`` defaults to a fresh one with process metrics.

    With ``background_load`` the server answers (live, not ready) while models load, as a process under
    an orchestrator should; without it start-up waits for the initial load, as tests and embedders want.
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
        app.state.feedback = open_feedback_store(settings)
        feedback = app.state.feedback
        if background_load:
            loader = asyncio.create_task(
                _load_then_watch(models, settings.poll_interval_s, feedback, metrics)
            )
        else:
            await models.start()
            await _report_feedback_usage(models, feedback, metrics)
            loader = asyncio.create_task(_watch(models, settings.poll_interval_s))
        try:
            yield
        finally:
            app.state.lifecycle.draining = True
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            await models.stop(app.state.lifecycle.time_left(settings.drain_seconds))
            if app.state.feedback is not None:
                app.state.feedback.close()

    app = ServingApp(
        title="digits-serving",
        description="KServe V2 inference for ONNX image classifiers, with dynamic batching.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.lifecycle = Lifecycle()
    app.state.feedback = None
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(feedback_router)
    refine(app)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def open_feedback_store(settings: Settings) -> FeedbackStore | None:
    """The feedback store when feedback is enabled; its directory must be writable (fail at start-up)."""
    if settings.feedback_dir is None:
        return None
    if not settings.feedback_enabled:
        log.warning("SERVE_FEEDBACK_DIR is set but SERVE_FEEDBACK_TOKEN is not: the feedback API is off")
        return None
    directory = settings.feedback_dir
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeError(f"cannot create the feedback directory {directory}: {exc.strerror}") from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise RuntimeError(f"the feedback directory {directory} is not writable by this process")
    log.info("feedback API on, storing into %s", directory)
    return FeedbackStore(
        directory, max_items=settings.feedback_max_items, max_bytes=settings.feedback_max_bytes
    )


async def _load_then_watch(
    models: ModelRegistry, interval: float, feedback: FeedbackStore | None, metrics: Metrics
) -> None:
    try:
        await models.start()
        await _report_feedback_usage(models, feedback, metrics)
    except Exception:
        log.exception("initial model load failed")
    await _watch(models, interval)


async def _report_feedback_usage(
    models: ModelRegistry, feedback: FeedbackStore | None, metrics: Metrics
) -> None:
    """Start the stored-feedback gauges from what is on disk (reading each model's log once)."""
    if feedback is None:
        return
    for name in models.names():
        usage = await asyncio.to_thread(feedback.usage, name)
        metrics.set_feedback_usage(name, usage.items, usage.bytes)


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

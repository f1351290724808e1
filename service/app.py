"""Application factory: ``create_app(settings)`` builds the HTTP app over the core; nothing happens at import.

The core (:class:`service.core.InferenceService`) is built here and started in the lifespan: sessions,
batchers and the repository watcher start there and are drained after its ``yield``. The app is
FastAPI with the HTTP adapter of :mod:`service.http`: routes, the one error mapping, the OpenAPI
document with its offline ``/docs``, and two middlewares, :class:`~service.http.dispatch.FastPath`
(innermost: the hot infer route) and :class:`~service.http.dispatch.CloseWhileDraining`. Middleware
added to the returned app wraps both, so it sees every request. With ``grpc_host`` the lifespan also
serves the gRPC adapter (:mod:`service.grpc`) over the same core, in the same event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from service.core import InferenceService
from service.grpc.server import open_grpc_server
from service.http.dispatch import CloseWhileDraining, FastPath
from service.http.errors import install_error_handlers
from service.http.explain import router as explain_router
from service.http.feedback import router as feedback_router
from service.http.openapi import install_docs, refine
from service.http.rollout import router as rollout_router
from service.http.routes import router
from service.http.tracing import RequestContext
from service.settings import Settings
from service.telemetry.metrics import Metrics
from service.telemetry.tracing import Tracing

STATIC = Path(__file__).parent / "static"


def create_app(
    settings: Settings,
    *,
    metrics_registry: CollectorRegistry | None = None,
    background_load: bool = False,
    fast_path: bool = True,
    grpc_host: str | None = None,
    grpc_reuse_port: bool = False,
    tracing: Tracing | None = None,
) -> FastAPI:
    """Build the service. ``metrics_registry`` (Prometheus) defaults to a fresh one with process metrics.

    With ``background_load`` the server answers (live, not ready) while models load, as a process under
    an orchestrator should; without it start-up waits for the initial load, as tests and embedders want.
    Without ``fast_path`` infer requests go through FastAPI's own route (same answers, slower).
    With ``grpc_host`` the lifespan serves gRPC on ``grpc_host:settings.grpc_port`` too (unless that is 0;
    ``grpc_reuse_port`` for ``--workers``); the bound port is ``app.state.grpc_port``.
    With ``tracing`` (:func:`service.telemetry.tracing.from_env`) requests are traced; it is shut down
    (its spans exported) after the core stops. Without it, and without JSON logs, no tracing code runs.
    """
    if metrics_registry is None:
        metrics_registry = CollectorRegistry()
        ProcessCollector(registry=metrics_registry)
        PlatformCollector(registry=metrics_registry)
        GCCollector(registry=metrics_registry)
    core = InferenceService(settings, Metrics(metrics_registry), tracing)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await core.start(background=background_load)
        app.state.models = core.registry
        grpc_server = None
        try:
            if grpc_host is not None and settings.grpc_port:
                grpc_server = open_grpc_server(core, reuse_port=grpc_reuse_port)
                app.state.grpc_port = await grpc_server.start(grpc_host, settings.grpc_port)
            yield
        finally:
            # New gRPC calls are refused from here on; those in flight finish before the port closes.
            core.begin_drain()
            if grpc_server is not None:
                await grpc_server.stop(core.lifecycle.time_left(settings.drain_seconds))
            await core.stop()
            if tracing is not None:  # export what is buffered, off the event loop
                await asyncio.to_thread(tracing.shutdown)

    app = FastAPI(
        title="digits-serving",
        description="KServe V2 inference for ONNX image classifiers, with dynamic batching.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # FastAPI's built-in OpenTelemetry hooks look up the global providers on every request, which
        # costs the hot route several percent (bench/serving.py --baseline-tree). The service exports
        # Prometheus metrics instead; to trace, add OpenTelemetry's ASGI middleware to the app.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.core = core
    app.state.settings = settings
    app.state.metrics = core.metrics
    app.state.lifecycle = core.lifecycle
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(feedback_router)
    app.include_router(explain_router)
    app.include_router(rollout_router)
    refine(app)
    install_docs(app)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/rollout", include_in_schema=False)
    async def rollout_page() -> FileResponse:  # docs/rollout.md
        return FileResponse(STATIC / "rollout.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # add_middleware puts each one outside those added before: FastPath is the innermost layer.
    if fast_path:
        app.add_middleware(FastPath, core=core)
    app.add_middleware(CloseWhileDraining, core=core)
    if tracing is not None or settings.log_format == "json":
        app.add_middleware(RequestContext, tracing=tracing)  # outermost: sees every answer
    return app

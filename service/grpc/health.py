"""The standard ``grpc.health.v1.Health`` service, answering what HTTP readiness answers.

``Check`` says SERVING exactly when ``GET /v2/health/ready`` says 200 (every model served, no drain
begun), for the whole server (``""``) and for ``inference.GRPCInferenceService``; other names are
NOT_FOUND, as the protocol asks. Readiness has no change notification, so ``Watch`` re-reads it every
``interval`` seconds and sends each change.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICES = ("", "inference.GRPCInferenceService")
_Status = health_pb2.HealthCheckResponse


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, ready: Callable[[], bool], *, interval: float = 1.0) -> None:
        self._ready = ready
        self._interval = interval

    def _status(self, service: str) -> int:
        if service not in SERVICES:
            return _Status.SERVICE_UNKNOWN
        return _Status.SERVING if self._ready() else _Status.NOT_SERVING

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service[:64]!r}")
        return _Status(status=self._status(request.service))

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while True:
            status = self._status(request.service)
            if status != last:
                yield _Status(status=status)
                last = status
            await asyncio.sleep(self._interval)

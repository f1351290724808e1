"""The gRPC listener: grpcio's asyncio server, in the event loop (and process) that serves HTTP.

:class:`GrpcServer` binds ``SERVE_GRPC_PORT`` with three services: ``inference.GRPCInferenceService``
(:mod:`service.grpc.servicer`), ``grpc.health.v1.Health`` (:mod:`service.grpc.health`) and server
reflection. Messages above ``SERVE_MAX_BODY_BYTES`` (the HTTP body limit, compressed or not) are refused by
gRPC itself with RESOURCE_EXHAUSTED. It is started and stopped by the app's lifespan; draining needs no
call here, since every RPC reads the lifecycle (readiness false, new calls UNAVAILABLE), and
:meth:`stop` closes the port and gives calls in flight until the drain deadline to finish.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.grpc.generated import grpc_service_pb2 as pb
from service.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from service.grpc.health import HealthServicer
from service.grpc.servicer import InferenceServicer, server_ready
from service.settings import Settings

log = logging.getLogger(__name__)
SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


class GrpcServer:
    """One ``grpc.aio`` server over the app's ``state``; create it inside the running event loop."""

    def __init__(self, state: Any, settings: Settings, *, reuse_port: bool = False) -> None:
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_body_bytes),
                ("grpc.max_send_message_length", -1),
                # SO_REUSEPORT only for --workers (one port, several processes); otherwise a second
                # server on a taken port must fail to start, not share it silently.
                ("grpc.so_reuseport", int(reuse_port)),
            ]
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(state), self._server)
        health = HealthServicer(lambda: server_ready(state))
        health_pb2_grpc.add_HealthServicer_to_server(health, self._server)
        reflection.enable_server_reflection(SERVICE_NAMES, self._server)

    async def start(self, host: str, port: int) -> int:
        """Bind ``host:port`` (0: any free port) and start serving; returns the bound port."""
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = self._server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio raises RuntimeError("Failed to bind to address ...")
            raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
        await self._server.start()
        log.info("gRPC listening on %s:%d", host, bound)
        return bound

    async def stop(self, grace: float) -> None:
        """Close the port now; calls in flight get ``grace`` seconds, then are cancelled."""
        await self._server.stop(grace)

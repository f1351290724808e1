"""The gRPC listeners, in the event loop (and process) that serves HTTP, and the services they serve.

:func:`services` lists three: ``inference.GRPCInferenceService`` (:mod:`service.grpc.servicer`),
``grpc.health.v1.Health`` (:mod:`service.grpc.health`) and server reflection. :func:`open_grpc_server`
binds ``SERVE_GRPC_PORT`` with the server ``SERVE_GRPC_SERVER`` names: the native one
(:mod:`service.grpc.native`, the default) or grpcio's asyncio server (:class:`GrpcServer`). Both answer
the same: messages above ``SERVE_MAX_BODY_BYTES`` (the HTTP body limit, compressed or not) are refused
with RESOURCE_EXHAUSTED. The inference service is registered from its descriptor rather than with the
generated ``add_..._to_server``, so that a message that does not parse reaches the servicer as
:class:`~service.grpc.protocol.Malformed` and is answered INVALID_ARGUMENT (grpcio would answer INTERNAL
and log a traceback).

A listener is started and stopped by the app's lifespan, beside the core. Draining needs no call here,
since every RPC asks the core (readiness false, new calls UNAVAILABLE); ``stop`` closes the port and gives
the calls in flight until the drain deadline to finish.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import grpc
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from service.core import InferenceService
from service.grpc.generated import grpc_service_pb2 as pb
from service.grpc.health import HealthServicer
from service.grpc.protocol import message_parser
from service.grpc.servicer import InferenceServicer, server_ready
from service.grpc.tracing import in_context
from service.telemetry.tracing import Tracing

log = logging.getLogger(__name__)
INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


class GrpcListener(Protocol):
    """What the app's lifespan needs of a gRPC listener, grpcio's or the native one."""

    async def start(self, host: str, port: int) -> int: ...

    async def stop(self, grace: float) -> None: ...


class GrpcServer:
    """One ``grpc.aio`` server over the core (``SERVE_GRPC_SERVER=grpcio``); create it inside the running
    event loop."""

    def __init__(self, core: InferenceService, *, reuse_port: bool = False) -> None:
        settings = core.settings
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_body_bytes),
                ("grpc.max_send_message_length", -1),
                # SO_REUSEPORT only for --workers (one port, several processes); otherwise a second
                # server on a taken port must fail to start, not share it silently.
                ("grpc.so_reuseport", int(reuse_port)),
            ]
        )
        for service, methods in services(core).items():
            # Registered methods are matched by grpcio's core when a call arrives, without the per-call
            # search of the generic handlers in Python; the generic handler stays as grpcio's fallback.
            self._server.add_registered_method_handlers(service, methods)
            self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, methods),))

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


def open_grpc_server(core: InferenceService, *, reuse_port: bool = False) -> GrpcListener:
    """The gRPC listener ``SERVE_GRPC_SERVER`` names, over every service :func:`services` lists."""
    if core.settings.grpc_server == "grpcio":
        return GrpcServer(core, reuse_port=reuse_port)
    try:
        from service.grpc.native import NativeGrpcServer
    except ImportError as exc:  # the C extension was not built (pip install builds it)
        raise RuntimeError(
            f"SERVE_GRPC_SERVER=native needs the compiled service.grpc._h2 ({exc}); install the package "
            "(pip install -e ., which needs libnghttp2-dev) or set SERVE_GRPC_SERVER=grpcio"
        ) from None
    table = {
        f"/{service}/{name}": handler
        for service, methods in services(core, wire=True).items()
        for name, handler in methods.items()
    }
    return NativeGrpcServer(
        table,
        max_message_bytes=core.settings.max_body_bytes,
        preface_timeout=core.settings.header_timeout_s,
        reuse_port=reuse_port,
        metrics=core.metrics,
    )


def services(core: InferenceService, *, wire: bool = False) -> dict[str, dict[str, grpc.RpcMethodHandler]]:
    """The handlers of every service served, by service and method name: inference, health, reflection.
    ``wire``: ``ModelInfer`` takes and returns wire bytes where it can (see :func:`inference_methods`)."""
    # The request id and span wrapper exists only when tracing or JSON logs are on.
    wrap = core.tracing is not None or core.settings.log_format == "json"
    table = {
        INFERENCE_SERVICE: inference_methods(
            InferenceServicer(core), core.tracing if wrap else None, wrap=wrap, wire=wire
        )
    }
    collector = _Collector(table)
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(lambda: server_ready(core)), collector)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(SERVICE_NAMES), collector
    )
    return table


class _Collector:
    """Takes the handlers that generated ``add_*Servicer_to_server`` functions register with a server."""

    def __init__(self, table: dict[str, dict[str, grpc.RpcMethodHandler]]) -> None:
        self._table = table

    def add_registered_method_handlers(self, service: str, methods: dict[str, grpc.RpcMethodHandler]) -> None:
        self._table[service] = dict(methods)

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """The same methods as a generic handler: already taken from the call above."""


def inference_handlers(
    servicer: InferenceServicer, tracing: Tracing | None = None, *, wrap: bool = False
) -> grpc.GenericRpcHandler:
    """Every method of ``inference.GRPCInferenceService``, bound to ``servicer``; with ``wrap``, each
    runs with its request id and (with ``tracing``) its server span (:mod:`service.grpc.tracing`)."""
    return grpc.method_handlers_generic_handler(
        INFERENCE_SERVICE, inference_methods(servicer, tracing, wrap=wrap)
    )


def inference_methods(
    servicer: InferenceServicer, tracing: Tracing | None = None, *, wrap: bool = False, wire: bool = False
) -> dict[str, grpc.RpcMethodHandler]:
    """The handlers of :func:`inference_handlers`, by method name. With ``wire`` and without ``wrap``,
    ``ModelInfer`` is :meth:`InferenceServicer.ModelInferBytes`, bytes in and bytes out: the native
    listener's handlers (it calls no (de)serializer then); the request id and span wrapper reads the
    request's message, so with ``wrap`` every method takes messages."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {}
    if wire and not wrap:
        handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(servicer.ModelInferBytes)
    for method in service.methods:
        if method.name in handlers:
            continue
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        behaviour = getattr(servicer, method.name)
        if wrap:
            behaviour = in_context(behaviour, method.name, tracing, streaming=method.client_streaming)
        make = (
            grpc.stream_stream_rpc_method_handler
            if method.client_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            behaviour,
            request_deserializer=message_parser(request_class),
            response_serializer=response_class.SerializeToString,
        )
    return handlers

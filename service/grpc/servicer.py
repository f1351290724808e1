"""``inference.GRPCInferenceService``: the KServe V2 gRPC protocol as a thin adapter over the service.

Every RPC parses its message, calls the same registry, batchers and checks the HTTP routes use, and shapes
the answer; each failure is a :class:`~service.errors.ServiceError`, answered once by :func:`_answer` with
the status :mod:`service.grpc.status` maps it to. A ``ModelInfer`` call and an HTTP infer request for the
same model version queue in the same batcher, so they can share a batch.

Semantics follow Triton's server: ``ModelReady`` answers ``ready: false`` (not an error) for a model that is
unknown or not ready; a request's deadline is the earlier of the gRPC deadline and ``parameters.timeout``
(microseconds); ``ModelStreamInfer`` answers each request of the stream as it completes, in any order,
with failures in ``error_message`` and the stream kept open. Shared memory, tracing and log settings are
not offered (UNIMPLEMENTED, with a message saying so).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from grpc.aio import ServicerContext as Context

from service import __version__
from service.api import parse_version, status_label
from service.errors import InvalidInput, NotFound, ServiceError, Unavailable
from service.grpc import admin, model_config
from service.grpc.generated import grpc_service_pb2 as pb
from service.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from service.grpc.protocol import encode_infer_response, parse_infer_request
from service.grpc.status import INTERNAL_MESSAGE, grpc_status
from service.protocol import InferenceRequest

log = logging.getLogger(__name__)
T = TypeVar("T")
PROTOCOL = "grpc"
EXTENSIONS = ["binary_tensor_data", "statistics", "model_repository", "classification"]


async def _answer(context: Context, call: Awaitable[T]) -> T:
    """Await ``call``; a ServiceError aborts the RPC with its mapped status, anything else with INTERNAL."""
    try:
        return await call
    except ServiceError as exc:
        code, message, trailers = grpc_status(exc)
    except (asyncio.CancelledError, grpc.aio.AbortError):
        raise
    except Exception:
        log.exception("unhandled error in a gRPC call")
        code, message, trailers = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, ()
    await context.abort(code, message, trailing_metadata=trailers)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


def _rpc(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(method)
    async def wrapper(self: InferenceServicer, request: Any, context: Context) -> T:
        return await _answer(context, method(self, request, context))

    return wrapper


def _unimplemented(what: str) -> Callable[..., Awaitable[Any]]:
    async def method(self: InferenceServicer, request: Any, context: Context) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not supported by this server")

    return method


@dataclass(frozen=True)
class Malformed:
    """A request whose bytes did not parse as its message type (see :mod:`service.grpc.server`)."""

    message: str


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The V2 gRPC service over the app's state (registry, settings, lifecycle), read at call time."""

    def __init__(self, state: Any) -> None:
        self._state = state

    # ---- health and metadata ------------------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=server_ready(self._state))

    @_rpc
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        version = _version(request.version)
        try:
            self._state.registry.get(request.name, version)
        except (NotFound, Unavailable):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=not self._state.lifecycle.draining)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="digits-serving", version=__version__, extensions=EXTENSIONS)

    @_rpc
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        registry = self._state.registry
        served = registry.get(request.name, _version(request.version))
        signature = served.runtime.signature
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=served.name,
            versions=[str(v) for v in registry.versions(served.name)],
            platform=model_config.PLATFORM,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in signature.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in signature.outputs],
        )

    @_rpc
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        served = self._state.registry.get(request.name, _version(request.version))
        return pb.ModelConfigResponse(config=model_config.config_of(served, self._state.settings))

    @_rpc
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        registry = self._state.registry
        version = _version(request.version)
        if request.name:
            registry.get(request.name, version)  # NOT_FOUND / UNAVAILABLE for what is not served
            names = [request.name]
        else:
            names = registry.names()
        response = pb.ModelStatisticsResponse()
        for name in names:
            for v in [version] if version is not None else registry.versions(name):
                stats = registry.get(name, v).metrics.stats.as_json(name, str(v))
                json_format.ParseDict(stats, response.model_stats.add())
        return response

    # ---- repository -----------------------------------------------------------------------------------

    @_rpc
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        rows = self._state.registry.index()
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(**row)
                for row in rows
                if not request.ready or row["state"] == "READY"
            ]
        )

    @_rpc
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        admin.require(self._state.settings, context)
        if request.parameters:
            raise InvalidInput("load parameters (config or file overrides) are not supported")
        await self._state.registry.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        admin.require(self._state.settings, context)
        await self._state.registry.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # ---- inference ------------------------------------------------------------------------------------

    @_rpc
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        return await self._infer(request, context.time_remaining())

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def one(request: pb.ModelInferRequest | Malformed) -> None:
            if isinstance(request, Malformed):
                answers.put_nowait(pb.ModelStreamInferResponse(error_message=request.message))
                return
            try:
                response = await self._infer(request, context.time_remaining())
                answers.put_nowait(pb.ModelStreamInferResponse(infer_response=response))
            except ServiceError as exc:
                failed = pb.ModelInferResponse(
                    model_name=request.model_name, model_version=request.model_version, id=request.id
                )
                answers.put_nowait(
                    pb.ModelStreamInferResponse(error_message=exc.message, infer_response=failed)
                )
            except Exception:
                log.exception("unhandled error in a gRPC stream request")
                answers.put_nowait(pb.ModelStreamInferResponse(error_message=INTERNAL_MESSAGE))

        async def read() -> None:
            async for request in request_iterator:
                task = asyncio.create_task(one(request))
                running.add(task)
                task.add_done_callback(running.discard)
            if running:
                await asyncio.wait(set(running))
            answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                yield answer
            await reader  # the client's half-close: re-raise a failed read
        finally:
            for task in (reader, *running):
                task.cancel()

    async def _infer(
        self, request: pb.ModelInferRequest, grpc_remaining: float | None
    ) -> pb.ModelInferResponse:
        """One inference, transport aside: the gRPC twin of :func:`service.api.run_infer`."""
        started = time.perf_counter()
        state = self._state
        settings = state.settings
        served = state.registry.get(request.model_name, _version(request.model_version))
        status = "error"
        try:
            if state.lifecycle.draining:
                raise Unavailable("server is draining")
            signature = served.runtime.signature
            parsed: InferenceRequest = parse_infer_request(
                request, signature=signature, max_rows=settings.max_request_rows
            )
            timeout_s = parsed.timeout_us / 1e6 if parsed.timeout_us else settings.default_timeout_s
            if grpc_remaining is not None:
                timeout_s = min(timeout_s, grpc_remaining)
            outputs = await served.batcher.submit(parsed.inputs, deadline=time.monotonic() + timeout_s)
            response = encode_infer_response(
                model_name=served.name,
                model_version=str(served.version),
                request_id=parsed.id,
                outputs=outputs,
                request=parsed,
                signature=signature,
            )
            status = "ok"
            return response
        except ServiceError as exc:
            status = status_label(exc)
            raise
        except asyncio.CancelledError:  # the client went away, or its deadline passed
            status = (
                "timeout"
                if grpc_remaining is not None and time.perf_counter() - started >= grpc_remaining
                else "cancelled"
            )
            raise
        finally:
            if status != "cancelled":
                served.metrics.observe_request(status, time.perf_counter() - started, protocol=PROTOCOL)

    SystemSharedMemoryStatus = _unimplemented("system shared memory")
    SystemSharedMemoryRegister = _unimplemented("system shared memory")
    SystemSharedMemoryUnregister = _unimplemented("system shared memory")
    CudaSharedMemoryStatus = _unimplemented("CUDA shared memory")
    CudaSharedMemoryRegister = _unimplemented("CUDA shared memory")
    CudaSharedMemoryUnregister = _unimplemented("CUDA shared memory")
    TraceSetting = _unimplemented("tracing")
    LogSettings = _unimplemented("changing log settings")


def server_ready(state: Any) -> bool:
    """What ``GET /v2/health/ready`` answers 200 for: every model served, and no drain begun."""
    return not state.lifecycle.draining and state.registry is not None and state.registry.ready


def _version(text: str) -> int | None:
    return parse_version(text or None)

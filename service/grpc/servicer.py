"""``inference.GRPCInferenceService``: the KServe V2 gRPC protocol as a thin adapter over the core.

Every RPC decodes its message, calls the typed core (:class:`~service.core.InferenceService`), the same
one the HTTP adapter calls, and encodes the answer; each failure is a
:class:`~service.errors.ServiceError`, answered once by :func:`_rpc` with the status
:mod:`service.grpc.status` maps its kind to. A ``ModelInfer`` call and an HTTP infer request for the same
model version go through the same core call into the same batcher, so they can share a batch; gRPC calls
are counted under ``protocol="grpc"``.

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
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from grpc.aio import ServicerContext as Context

from service.contract import parse_version
from service.core import InferenceService, InferRequest, InferResponse
from service.core.signature import ModelSignature
from service.errors import InvalidInput, NotFound, ServiceError, Unavailable
from service.grpc import model_config
from service.grpc.generated import grpc_service_pb2 as pb
from service.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from service.grpc.protocol import (
    Malformed,
    decode_plain,
    encode_infer_bytes,
    encode_infer_response,
    parse_infer_request,
    parse_model_infer,
    parse_plain_request,
)
from service.grpc.status import INTERNAL_MESSAGE, grpc_status
from service.grpc.tracing import stream_request

log = logging.getLogger(__name__)
T = TypeVar("T")
PROTOCOL = "grpc"


def _rpc(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """``method`` answered once: a request that did not parse is INVALID_ARGUMENT, a ServiceError aborts
    the RPC with its mapped status, anything else with INTERNAL. Every unary method of the service is
    wrapped in it, so no other layer checks for undecodable requests (one coroutine around the method,
    not three: this runs on every call)."""

    @functools.wraps(method)
    async def answer(self: InferenceServicer, request: Any, context: Context) -> T:
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        try:
            return await method(self, request, context)
        except ServiceError as exc:
            code, message, trailers = grpc_status(exc)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("unhandled error in a gRPC call")
            code, message, trailers = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, ()
        await context.abort(code, message, trailing_metadata=trailers)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    return answer


def _unimplemented(what: str) -> Callable[..., Awaitable[Any]]:
    @_rpc
    async def method(self: InferenceServicer, request: Any, context: Context) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not supported by this server")

    return method


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The V2 gRPC service over one :class:`~service.core.InferenceService`."""

    def __init__(self, core: InferenceService) -> None:
        self._core = core

    # ---- health and metadata ------------------------------------------------------------------------

    @_rpc
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=server_ready(self._core))

    @_rpc
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        version = _version(request.version)
        try:
            self._core.check_model_ready(request.name, version)
        except (NotFound, Unavailable):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @_rpc
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        info = self._core.server_info()
        return pb.ServerMetadataResponse(name=info.name, version=info.version, extensions=info.extensions)

    @_rpc
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        info = self._core.model_info(request.name, _version(request.version))
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=info.name,
            versions=[str(v) for v in info.versions],
            platform=info.platform,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in info.signature.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in info.signature.outputs],
        )

    @_rpc
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        info = self._core.model_info(request.name, _version(request.version))
        delay = self._core.settings.max_queue_delay_us
        return pb.ModelConfigResponse(config=model_config.config_of(info, delay))

    @_rpc
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        rows = self._core.statistics(request.name or None, _version(request.version))
        response = pb.ModelStatisticsResponse()
        for row in rows:
            json_format.ParseDict(row.stats.as_json(row.name, str(row.version)), response.model_stats.add())
        return response

    # ---- repository -----------------------------------------------------------------------------------

    @_rpc
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        entry = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                entry(name=e.name, version=str(e.version), state=e.state, reason=e.reason)
                for e in self._core.repository_index()
                if not request.ready or e.state == "READY"
            ]
        )

    @_rpc
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        self._core.authorize_admin(_authorization(context))
        if request.parameters:
            raise InvalidInput("load parameters (config or file overrides) are not supported")
        await self._core.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        self._core.authorize_admin(_authorization(context))
        await self._core.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # ---- inference ------------------------------------------------------------------------------------

    @_rpc
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        return await self._infer(request, context.time_remaining(), _metadata(context, "routing-key"))

    @_rpc
    async def ModelInferBytes(self, payload: bytes, context: Context) -> bytes:
        """``ModelInfer`` from the request's wire bytes to the answer's, for the native listener
        (:func:`service.grpc.server.inference_methods` with ``wire=True``). A request of the plain form is
        read and answered by :mod:`service.grpc._wire` without message objects; any other is parsed by
        protobuf and answered as :meth:`ModelInfer` answers it. Either way the checks are the same
        (:mod:`service.grpc.protocol`), and so are the answers, byte for byte."""
        plain = decode_plain(payload)
        if plain is None:
            request = parse_model_infer(payload)
            if isinstance(request, Malformed):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            response = await self._infer(request, context.time_remaining(), _metadata(context, "routing-key"))
            return response.SerializeToString()
        model, version, _, _, _, _ = plain
        return await self._call(
            model,
            version,
            context.time_remaining(),
            _metadata(context, "routing-key"),
            lambda signature, rows, deadline: parse_plain_request(
                plain, signature=signature, max_rows=rows, deadline=deadline
            ),
            encode_infer_bytes,
        )

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest | Malformed], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()
        routing_key = _metadata(context, "routing-key")

        async def one(request: pb.ModelInferRequest | Malformed) -> None:
            if isinstance(request, Malformed):
                answers.put_nowait(pb.ModelStreamInferResponse(error_message=request.message))
                return
            try:
                response = await stream_request(
                    self._core.tracing,
                    request.id,
                    lambda: self._infer(request, context.time_remaining(), routing_key),
                )
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
        self, request: pb.ModelInferRequest, grpc_remaining: float | None, routing_key: str | None = None
    ) -> pb.ModelInferResponse:
        """One inference: decode against the version's signature, call the core, encode its answer.

        The deadline is the earlier of the gRPC deadline and ``parameters.timeout``; ``routing_key``
        (metadata ``routing-key``) keeps a client on one version during a rollout's canary.
        """
        return await self._call(
            request.model_name,
            request.model_version,
            grpc_remaining,
            routing_key,
            lambda signature, rows, deadline: parse_infer_request(
                request, signature=signature, max_rows=rows, deadline=deadline
            ),
            encode_infer_response,
        )

    async def _call(
        self,
        model: str,
        version_text: str,
        grpc_remaining: float | None,
        routing_key: str | None,
        decode: Callable[[ModelSignature, int, float | None], InferRequest],
        encode: Callable[[InferResponse], T],
    ) -> T:
        """The core call of one inference: ``decode`` (given the version's signature and row limit, and
        the deadline) checks the request, the core answers it, ``encode`` writes the answer."""
        version = _version(version_text)
        async with self._core.call(model, version, protocol=PROTOCOL, routing_key=routing_key) as call:
            deadline = None if grpc_remaining is None else time.monotonic() + grpc_remaining
            signature, rows = call.signature, call.settings.max_request_rows
            if call.trace is None:  # tracing off or this request not sampled
                parsed = decode(signature, rows, deadline)
            else:
                with call.trace.child("decode"):
                    parsed = decode(signature, rows, deadline)
            response = await call.infer(parsed)
            if call.trace is None:
                return encode(response)
            with call.trace.child("encode"):
                return encode(response)

    SystemSharedMemoryStatus = _unimplemented("system shared memory")
    SystemSharedMemoryRegister = _unimplemented("system shared memory")
    SystemSharedMemoryUnregister = _unimplemented("system shared memory")
    CudaSharedMemoryStatus = _unimplemented("CUDA shared memory")
    CudaSharedMemoryRegister = _unimplemented("CUDA shared memory")
    CudaSharedMemoryUnregister = _unimplemented("CUDA shared memory")
    TraceSetting = _unimplemented("tracing")
    LogSettings = _unimplemented("changing log settings")


def server_ready(core: InferenceService) -> bool:
    """What ``GET /v2/health/ready`` answers 200 for: every model served, and no drain begun."""
    try:
        core.check_ready()
    except Unavailable:
        return False
    return True


def _authorization(context: Context) -> str | None:
    """The call's ``authorization`` metadata (``Bearer <token>``, as the HTTP header), for the core."""
    return _metadata(context, "authorization")


def _metadata(context: Context, name: str) -> str | None:
    """The call's metadata value ``name`` (the first), cut to 256 characters; None without it."""
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return (value if isinstance(value, str) else value.decode("latin-1"))[:256]
    return None


def _version(text: str) -> int | None:
    """The version a request names ("" is the newest); InvalidInput unless a canonical positive integer."""
    if not text:
        return None
    version = parse_version(text)
    if version is None:
        raise InvalidInput(f"model version must be a positive integer, got '{text[:32]}'")
    return version

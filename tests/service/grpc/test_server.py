"""Each gRPC listener (native and grpcio) on its own over a core (no HTTP app): binding, SO_REUSEPORT,
undecodable messages."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from service.app import create_app
from service.core import InferenceService
from service.grpc.generated import grpc_service_pb2 as pb
from service.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from service.grpc.server import GrpcListener, open_grpc_server
from service.grpc.tensors import build_infer_request, response_arrays
from service.settings import Settings
from service.telemetry.metrics import Metrics
from tests.helpers.modelfactory import WrittenModel, write_model_version
from tests.helpers.server import free_port
from tests.reliability.support import images

SERVERS = pytest.mark.parametrize("kind", ["native", "grpcio"])


def serve(
    test: Callable[[GrpcListener, str, WrittenModel], Awaitable[None]], tmp_path: Path, kind: str
) -> None:
    """A started core and the ``kind`` listener over it on a free port; ``test`` gets it and its address."""
    model = write_model_version(tmp_path, "tiny", 1)

    async def main() -> None:
        settings = Settings(model_repository=tmp_path, max_queue_delay_us=0, grpc_server=kind)
        core = InferenceService(settings, Metrics(CollectorRegistry()))
        await core.start()
        server = open_grpc_server(core)
        port = await server.start("127.0.0.1", 0)
        try:
            await test(server, f"127.0.0.1:{port}", model)
        finally:
            await server.stop(1)
            await core.stop()

    asyncio.run(main())


@SERVERS
def test_serves_a_core_without_any_http(tmp_path: Path, kind: str) -> None:
    async def test(server: GrpcListener, address: str, model: WrittenModel) -> None:
        batch = images(2, seed=4)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
            answer = await stub.ModelInfer(build_infer_request("tiny", {"image": ("FP32", batch)}))
        probabilities = response_arrays(answer)["probabilities"]
        assert abs(probabilities - model.reference(batch)).max() < 1e-5

    serve(test, tmp_path, kind)


@SERVERS
def test_undecodable_messages_are_invalid_argument_unary_and_in_band_in_a_stream(
    tmp_path: Path, kind: str
) -> None:
    async def test(server: GrpcListener, address: str, model: WrittenModel) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            for method in ("ModelInfer", "ModelMetadata", "RepositoryModelLoad"):
                call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(b"\x0a\xff\xff")  # field 1, a length past the end
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "the request is not a valid inference." in (info.value.details() or "")
            stream = channel.stream_stream(
                "/inference.GRPCInferenceService/ModelStreamInfer",
                response_deserializer=pb.ModelStreamInferResponse.FromString,
            )
            good = build_infer_request("tiny", {"image": ("FP32", images(1))}, request_id="good")
            answers = [a async for a in stream(iter([b"\x0a\xff\xff", good.SerializeToString()]))]
        by_id = {a.infer_response.id: a for a in answers}
        assert by_id[""].error_message == "the request is not a valid inference.ModelInferRequest message"
        assert by_id["good"].error_message == "" and by_id["good"].infer_response.outputs

    serve(test, tmp_path, kind)


@SERVERS
def test_a_taken_port_fails_start_up_and_reuse_port_shares_it(tmp_path: Path, kind: str) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    settings = Settings(model_repository=tmp_path, grpc_port=port, grpc_server=kind)
    app = create_app(settings, grpc_host="127.0.0.1")
    with pytest.raises(OSError, match=f"cannot listen for gRPC on 127.0.0.1:{port}"), TestClient(app):
        pass
    taken.close()

    async def main() -> None:
        core = InferenceService(
            Settings(model_repository=tmp_path, grpc_server=kind), Metrics(CollectorRegistry())
        )
        shared = free_port()
        first, second = open_grpc_server(core, reuse_port=True), open_grpc_server(core, reuse_port=True)
        assert await first.start("127.0.0.1", shared) == shared
        assert await second.start("127.0.0.1", shared) == shared  # --workers: one port, several processes
        await first.stop(0)
        await second.stop(0)

    asyncio.run(main())

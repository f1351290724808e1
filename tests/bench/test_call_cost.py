"""bench.call_cost drives whole calls through both listeners' connections, each answered with the model's
output, and leaves the batcher as it found it."""

from __future__ import annotations

import asyncio

from bench import call_cost
from service.core import batching
from service.grpc import _wire
from service.grpc.generated import grpc_service_pb2 as pb


def test_every_target_is_measured_on_answered_calls() -> None:
    submit = batching.Batcher.submit
    spent = asyncio.run(call_cost.measure(rounds=2, requests=20))  # check() raises on an unanswered call
    assert set(spent) == {"http", "grpc", "grpc-messages"}
    assert all(len(runs) == 2 and all(r > 0 for r in runs) for runs in spent.values())
    assert batching.Batcher.submit is submit


def test_the_grpc_calls_are_plain_model_infer_calls_with_increasing_streams() -> None:
    image = call_cost.np.zeros((1, 28, 28, 1), call_cost.np.float32)
    _, frames = call_cost.grpc_calls(image, 6)
    streams = [int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF for frame in frames]
    assert streams == [1, 3, 5, 7, 9, 11]
    last = frames[-1]
    headers_length = int.from_bytes(last[:3], "big")
    data = last[9 + headers_length + 9 :]
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == len(data) - 5  # one uncompressed message
    assert _wire.decode_infer(data[5:]) is not None  # of the form tritonclient sends
    assert pb.ModelInferRequest.FromString(data[5:]).model_name == call_cost.MODEL

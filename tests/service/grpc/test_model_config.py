"""Triton's ModelConfig of a served version: dims without the batch dimension, or whole when unbatched."""

from __future__ import annotations

from service.contract import Preprocessing
from service.core import ModelInfo
from service.core.signature import ModelSignature, TensorSpec
from service.grpc.generated import model_config_pb2 as mc
from service.grpc.model_config import config_of


def info(signature: ModelSignature) -> ModelInfo:
    return ModelInfo(
        name="m",
        version=2,
        versions=(1, 2),
        platform="onnxruntime_onnx",
        signature=signature,
        labels=(),
        preprocessing=Preprocessing(height=28, width=28, color="grayscale", resize="digit"),
        provider="CPUExecutionProvider",
        max_batch_size=16,
    )


def test_a_batched_model_drops_the_batch_dimension() -> None:
    signature = ModelSignature(
        inputs=(TensorSpec("image", "FP32", (-1, 28, 28, 1)), TensorSpec("mask", "BOOL", (-1, 4))),
        outputs=(TensorSpec("probabilities", "FP16", (-1, 10)),),
    )
    config = config_of(info(signature), 500)
    assert (config.name, config.platform, config.max_batch_size) == ("m", "onnxruntime_onnx", 16)
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("image", mc.TYPE_FP32, [28, 28, 1]),
        ("mask", mc.TYPE_BOOL, [4]),
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("probabilities", mc.TYPE_FP16, [10])
    ]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500


def test_an_unbatched_model_keeps_its_whole_shape_and_max_batch_size_zero() -> None:
    signature = ModelSignature(
        inputs=(TensorSpec("x", "INT64", (3, 4)),), outputs=(TensorSpec("y", "FP64", (-1, 2)),)
    )
    config = config_of(info(signature), 0)
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [3, 4] and list(config.output[0].dims) == [-1, 2]

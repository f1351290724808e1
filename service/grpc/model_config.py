"""Triton's ``ModelConfig`` for a served version, as ``tritonclient`` and ``perf_analyzer`` read it.

Only what is true of this server is filled in: the ONNX Runtime platform, ``max_batch_size`` and the
dynamic batcher's delay from the settings, and the tensors without their batch dimension (Triton's
convention when ``max_batch_size`` > 0).
"""

from __future__ import annotations

from service.core import ModelInfo
from service.core.signature import TensorSpec
from service.grpc.generated import model_config_pb2 as mc


def config_of(info: ModelInfo, max_queue_delay_us: int) -> mc.ModelConfig:
    signature = info.signature
    batched = all(t.shape[:1] == (-1,) for t in (*signature.inputs, *signature.outputs))
    return mc.ModelConfig(
        name=info.name,
        platform=info.platform,
        backend="onnxruntime",
        max_batch_size=info.max_batch_size if batched else 0,
        input=[
            mc.ModelInput(name=t.name, data_type=_type(t), dims=_dims(t, batched)) for t in signature.inputs
        ],
        output=[
            mc.ModelOutput(name=t.name, data_type=_type(t), dims=_dims(t, batched)) for t in signature.outputs
        ],
        dynamic_batching=mc.ModelDynamicBatching(max_queue_delay_microseconds=max_queue_delay_us),
    )


def _type(spec: TensorSpec) -> str:
    return f"TYPE_{'STRING' if spec.datatype == 'BYTES' else spec.datatype}"


def _dims(spec: TensorSpec, batched: bool) -> list[int]:
    return list(spec.shape[1:] if batched else spec.shape)

"""Tiny real ONNX image classifiers, written into model repositories the way the trainer publishes them.

    from tests.helpers.modelfactory import write_model_version

    model = write_model_version(tmp_path, "tiny", 1)         # tmp_path/tiny/1/{model.onnx,metadata.json}
    expected = model.reference(images)                       # numpy computation of the same graph

The graph is ``image [N,H,W,C] FP32 -> x/255 -> Flatten -> MatMul W -> Add b -> Softmax -> probabilities
[N,K]`` with a symbolic batch dimension ``N`` and seeded random weights. The metadata always declares that
signature; a ``variant`` changes the *model* so that it disagrees with the metadata or fails at run time:

- ``"ok"``: model and metadata agree.
- ``"output_name"``: the graph output is called ``probs``.
- ``"output_dims"``: the graph outputs K + 1 classes.
- ``"input_dtype"``: the graph input is UINT8 (cast to float inside).
- ``"input_rank"``: the graph input is already flat, ``[N, H*W*C]``.
- ``"fixed_batch"``: the batch dimension is fixed to 1 in the graph.
- ``"batch_one_only"``: loads and matches the metadata, but a Reshape to ``[1, K]`` makes any batch of more
  than one row fail inside onnxruntime.
- ``"value_trap"``: loads, warms up and serves dim images (every pixel < 51), but any brighter pixel makes
  a Gather index go out of range inside onnxruntime: a model that fails at run time.
- ``"corrupt"``: ``model.onnx`` is garbage bytes (with the right sha256 in the metadata).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.contract import (
    METADATA_FILE,
    MODEL_FILE,
    PLATFORM,
    Evaluation,
    Metadata,
    Parity,
    Preprocessing,
    TensorMetadata,
    metadata_json,
)

Variant = Literal[
    "ok",
    "output_name",
    "output_dims",
    "input_dtype",
    "input_rank",
    "fixed_batch",
    "batch_one_only",
    "value_trap",
    "corrupt",
]
VARIANTS: tuple[Variant, ...] = get_args(Variant)

#: Put as a value in ``metadata_overrides`` to remove that key from metadata.json.
DROP: Any = object()


@dataclass(frozen=True)
class WrittenModel:
    """A model version written by :func:`write_model_version`."""

    path: Path  # the version directory
    weight: np.ndarray  # [H*W*C, K'] float32 (K' = K + 1 for "output_dims")
    bias: np.ndarray  # [K'] float32
    metadata: dict[str, Any]  # what metadata.json holds

    def reference(self, images: np.ndarray) -> np.ndarray:
        """The probabilities the graph computes for ``images`` [N,H,W,C], in float64 numpy."""
        logits = (images.reshape(len(images), -1).astype(np.float64) / 255.0) @ self.weight + self.bias
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)


def build_model(
    *,
    input_shape: Sequence[int] = (28, 28, 1),
    classes: int = 10,
    opset: int = 17,
    seed: int = 0,
    variant: Variant = "ok",
) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Serialize the classifier graph for ``variant``; returns (model bytes, weight, bias)."""
    if variant == "corrupt":
        garbage = np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes()
        return b"not an onnx model\x00" + garbage, np.zeros((0, 0), np.float32), np.zeros(0, np.float32)
    features = int(np.prod(input_shape))
    outputs = classes + 1 if variant == "output_dims" else classes
    rng = np.random.default_rng(seed)
    weight = rng.normal(0.0, 0.5, (features, outputs)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, outputs).astype(np.float32)
    batch: str | int = 1 if variant == "fixed_batch" else "N"
    in_dims = [batch, features] if variant == "input_rank" else [batch, *input_shape]
    in_type = TensorProto.UINT8 if variant == "input_dtype" else TensorProto.FLOAT

    nodes = []
    first = "image"
    if variant == "input_dtype":
        nodes.append(helper.make_node("Cast", ["image"], ["image_f"], to=TensorProto.FLOAT))
        first = "image_f"
    nodes += [
        helper.make_node("Mul", [first, "scale"], ["scaled"]),
        helper.make_node("Flatten", ["scaled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weight"], ["matmul"]),
        helper.make_node("Add", ["matmul", "bias"], ["logits"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array(1.0 / 255.0, np.float32), "scale"),
        numpy_helper.from_array(weight, "weight"),
        numpy_helper.from_array(bias, "bias"),
    ]
    softmax_in = "logits"
    if variant == "batch_one_only":
        # Reshape [N, K] to [N*N, K]: fine for one row, impossible for more. Shape inference cannot multiply
        # symbolic dimensions, so the session still reports the batch as symbolic and the model loads.
        initializers += [
            numpy_helper.from_array(np.array([0], np.int64), "zero"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
            numpy_helper.from_array(np.array([2], np.int64), "two"),
        ]
        nodes += [
            helper.make_node("Shape", ["logits"], ["logits_shape"]),
            helper.make_node("Slice", ["logits_shape", "zero", "one"], ["rows"]),
            helper.make_node("Slice", ["logits_shape", "one", "two"], ["cols"]),
            helper.make_node("Mul", ["rows", "rows"], ["rows_squared"]),
            helper.make_node("Concat", ["rows_squared", "cols"], ["squared_shape"], axis=0),
            helper.make_node("Reshape", ["logits", "squared_shape"], ["one_row_logits"]),
        ]
        softmax_in = "one_row_logits"
    if variant == "value_trap":
        # Gather at index floor(5 * max(x)/255) from a one-element tensor: any pixel >= 51 makes the index
        # out of range, so warm-up (zeros) and dim inputs pass while bright inputs fail inside onnxruntime.
        initializers += [
            numpy_helper.from_array(np.array([0.0], np.float32), "trap_data"),
            numpy_helper.from_array(np.array(5.0, np.float32), "five"),
        ]
        nodes += [
            helper.make_node("ReduceMax", ["scaled"], ["peak"], keepdims=0),
            helper.make_node("Mul", ["peak", "five"], ["peak5"]),
            helper.make_node("Floor", ["peak5"], ["peak_floor"]),
            helper.make_node("Cast", ["peak_floor"], ["trap_index"], to=TensorProto.INT64),
            helper.make_node("Gather", ["trap_data", "trap_index"], ["trap_value"], axis=0),
            helper.make_node("Add", [softmax_in, "trap_value"], ["trapped_logits"]),
        ]
        softmax_in = "trapped_logits"
    out_name = "probs" if variant == "output_name" else "probabilities"
    nodes.append(helper.make_node("Softmax", [softmax_in], [out_name], axis=-1))
    graph = helper.make_graph(
        nodes,
        "tiny_classifier",
        [helper.make_tensor_value_info("image", in_type, in_dims)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [batch, outputs])],
        initializer=initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    # onnx writes its own newest IR version by default, which onnxruntime may not read yet.
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model)
    return model.SerializeToString(), weight, bias


def write_model_version(
    root: Path,
    name: str = "tiny",
    version: int = 1,
    *,
    input_shape: Sequence[int] = (28, 28, 1),
    classes: int = 10,
    labels: Sequence[str] | None = None,
    opset: int = 17,
    seed: int = 0,
    variant: Variant = "ok",
    resize: Literal["stretch", "center_crop", "digit"] = "stretch",
    metadata_overrides: Mapping[str, Any] | None = None,
) -> WrittenModel:
    """Publish ``root/name/version`` atomically (temporary sibling, then rename), like the trainer does.

    The metadata is built and validated through the repository contract (:class:`service.contract.Metadata`,
    ``preprocessing`` derived from ``input_shape`` with ``resize``). ``labels`` default to
    ``class_0 .. class_{K-1}``. ``metadata_overrides`` replace (or, with :data:`DROP`, remove) top-level
    metadata keys after validation, to write inconsistent metadata on purpose. The version directory must
    not exist yet.
    """
    data, weight, bias = build_model(
        input_shape=input_shape, classes=classes, opset=opset, seed=seed, variant=variant
    )
    height, width, channels = input_shape  # an image model: [-1, H, W, C]
    names = list(labels) if labels is not None else [f"class_{i}" for i in range(classes)]
    document = Metadata(
        name=name,
        version=version,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        platform=PLATFORM,
        inputs=(TensorMetadata(name="image", datatype="FP32", shape=(-1, *input_shape)),),
        outputs=(TensorMetadata(name="probabilities", datatype="FP32", shape=(-1, classes)),),
        labels=tuple(names),
        preprocessing=Preprocessing(
            height=height, width=width, color="rgb" if channels == 3 else "grayscale", resize=resize
        ),
        sha256=hashlib.sha256(data).hexdigest(),
        opset=opset,
        dataset="synthetic",
        metrics=Evaluation(accuracy=0.1, loss=2.3, per_class_accuracy=dict.fromkeys(names, 0.1)),
        training={"preset": "tiny", "seed": seed, "epochs": 0, "wall_time_s": 0.0},
        parity=Parity(max_abs_diff=0.0, argmax_agreement=1.0),
        versions={"onnx": onnx.__version__},
    )
    metadata: dict[str, Any] = json.loads(metadata_json(document))
    for key, value in (metadata_overrides or {}).items():
        if value is DROP:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    final = root / name / str(version)
    staging = root / name / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    (staging / MODEL_FILE).write_bytes(data)
    (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    os.rename(staging, final)
    return WrittenModel(final, weight, bias, metadata)

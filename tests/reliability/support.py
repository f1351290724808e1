"""Shared pieces of the reliability tests: request bodies, error checks, metrics, slow models."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.modelfactory import write_model_version

IMAGE_SHAPE = (28, 28, 1)


def images(count: int, seed: int = 0, high: float = 255.0) -> np.ndarray:
    """``count`` random 28x28x1 FP32 images with pixel values in 0..high."""
    return np.random.default_rng(seed).uniform(0, high, (count, *IMAGE_SHAPE)).astype(np.float32)


def json_body(batch: np.ndarray, **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "inputs": [
            {"name": "image", "datatype": "FP32", "shape": list(batch.shape), "data": batch.ravel().tolist()}
        ]
    }
    body.update(extra)
    return orjson.dumps(body)


def binary_body(batch: np.ndarray, datatype: str = "FP32", **extra: Any) -> tuple[bytes, dict[str, str]]:
    """A binary-tensor request as tritonclient writes it, with its header-length header."""
    raw = batch.astype(np.uint8 if datatype == "UINT8" else np.float32).tobytes()
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": datatype,
                    "shape": list(batch.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
            **extra,
        }
    )
    return head + raw, {"Inference-Header-Content-Length": str(len(head))}


def binary_probabilities(content: bytes, header_length: int) -> np.ndarray:
    head = orjson.loads(content[:header_length])
    [out] = head["outputs"]
    return np.frombuffer(content[header_length:], np.float32).reshape(out["shape"])


def json_probabilities(body: dict[str, Any]) -> np.ndarray:
    [out] = body["outputs"]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def assert_error_body(status: int, content: bytes, allowed: range | tuple[int, ...]) -> str:
    """The response is a ``{"error": str}`` JSON body with a status in ``allowed``; returns the message."""
    assert status in allowed, (status, content[:300])
    body = orjson.loads(content)
    assert isinstance(body, dict) and set(body) == {"error"}, content[:300]
    assert isinstance(body["error"], str) and body["error"], content[:300]
    return str(body["error"])


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def write_slow_model(root: Path, name: str, version: int = 1, *, layers: int = 60) -> Path:
    """A valid model whose compute is deliberately heavy (a chain of 256x256 MatMul + Tanh layers).

    It keeps the shipped signature (``image`` [-1,28,28,1] -> ``probabilities`` [-1,10]), so only its
    cost differs from the factory's tiny model: enough that batches, not HTTP parsing, bound throughput.
    """
    written = write_model_version(root, name, version)
    rng = np.random.default_rng(version)
    width = 256
    initializers = [
        numpy_helper.from_array(np.array(1.0 / 255.0, np.float32), "scale"),
        numpy_helper.from_array(rng.normal(0, 0.05, (784, width)).astype(np.float32), "w_in"),
        numpy_helper.from_array(rng.normal(0, 0.06, (width, width)).astype(np.float32), "w_hidden"),
        numpy_helper.from_array(rng.normal(0, 0.1, (width, 10)).astype(np.float32), "w_out"),
    ]
    nodes = [
        helper.make_node("Mul", ["image", "scale"], ["scaled"]),
        helper.make_node("Flatten", ["scaled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w_in"], ["h0"]),
    ]
    for i in range(layers):  # one weight, reused: heavy compute, small file
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w_hidden"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("MatMul", [f"h{layers}", "w_out"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "slow_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", *IMAGE_SHAPE])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        initializer=initializers,
    )
    opsets = [helper.make_opsetid("", 17)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    data = model.SerializeToString()
    metadata = dict(written.metadata, sha256=hashlib.sha256(data).hexdigest())
    # Replace the version atomically, the way a publisher would.
    staging = root / name / f".tmp-slow-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(data)
    (staging / "metadata.json").write_text(json.dumps(metadata))
    old = root / name / f".old-{uuid.uuid4().hex[:8]}"
    os.rename(written.path, old)
    os.rename(staging, written.path)
    for child in old.iterdir():
        child.unlink()
    old.rmdir()
    return written.path

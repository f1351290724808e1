"""ONNX export and the parity gate, on a real tiny model and real test images."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from training.errors import ExportError
from training.export import MAX_ABS_DIFF, OPSET, PARITY_MAX_IMAGES, check_parity, parity_gate


def test_export_has_the_contract_signature(tiny_run) -> None:
    model = tiny_run.onnx_model
    onnx.checker.check_model(model)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    (image,) = model.graph.input
    (probabilities,) = model.graph.output
    assert image.name == "image"
    assert probabilities.name == "probabilities"
    assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = image.type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value")  # dynamic batch
    assert [d.dim_value for d in dims[1:]] == [28, 28, 1]


def test_exported_model_runs_any_batch_size(tiny_run) -> None:
    session = ort.InferenceSession(
        tiny_run.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    for batch in (1, 7):
        images = tiny_run.dataset.x_test[:batch].astype(np.float32)
        (probabilities,) = session.run(["probabilities"], {"image": images})
        assert probabilities.shape == (batch, 10)
        assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_parity_gate_passes_a_faithful_export(tiny_run) -> None:
    parity = parity_gate(
        tiny_run.onnx_model.SerializeToString(), tiny_run.trained.model, tiny_run.dataset.x_test
    )
    assert parity.n_images == PARITY_MAX_IMAGES
    assert parity.max_abs_diff <= MAX_ABS_DIFF
    assert parity.argmax_agreement == 1.0
    assert parity.passed


def test_parity_gate_refuses_a_tampered_export(tiny_run, tampered_onnx) -> None:
    onnx_bytes = tampered_onnx.SerializeToString()
    parity = check_parity(onnx_bytes, tiny_run.trained.model, tiny_run.dataset.x_test[:512])
    assert parity.max_abs_diff > MAX_ABS_DIFF
    assert not parity.passed
    with pytest.raises(ExportError, match="parity gate failed on 1024 test images"):
        parity_gate(onnx_bytes, tiny_run.trained.model, tiny_run.dataset.x_test)


def test_parity_gate_refuses_a_renamed_output(tiny_run) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(tiny_run.onnx_model)
    output = model.graph.output[0]
    for node in model.graph.node:
        node.output[:] = ["scores" if name == output.name else name for name in node.output]
    output.name = "scores"
    with pytest.raises(ExportError, match="wrong signature"):
        parity_gate(model.SerializeToString(), tiny_run.trained.model, tiny_run.dataset.x_test)


def test_parity_gate_needs_512_images(tiny_run) -> None:
    with pytest.raises(ExportError, match="at least 512 test images"):
        parity_gate(
            tiny_run.onnx_model.SerializeToString(), tiny_run.trained.model, tiny_run.dataset.x_test[:511]
        )


def test_parity_gate_refuses_bytes_that_are_not_a_model(tiny_run) -> None:
    with pytest.raises(ExportError, match="onnxruntime cannot load"):
        parity_gate(b"not a model", tiny_run.trained.model, tiny_run.dataset.x_test)

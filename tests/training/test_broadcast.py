"""Constants at their operand's rank (training/broadcast.py): the same results bit for bit, on graphs built
here and on a real export, with shared, declared and multi-value constants handled as documented."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from training.broadcast import rank_matched_constants

FLOAT = onnx.TensorProto.FLOAT


def _model(
    nodes: list[onnx.NodeProto], inputs: dict[str, list], outputs: dict[str, list], constants: dict
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, FLOAT, s) for n, s in outputs.items()],
        [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8  # what the installed onnxruntime reads
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _dims(model: onnx.ModelProto) -> dict[str, list[int]]:
    return {t.name: list(t.dims) for t in model.graph.initializer}


def _rescaling() -> onnx.ModelProto:
    """The Keras ``Rescaling`` layer as tf2onnx writes it: a scalar factor and offset over the image."""
    nodes = [
        helper.make_node("Mul", ["image", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offset"], ["out"]),
    ]
    return _model(
        nodes, {"image": ["N", 28, 28, 1]}, {"out": ["N", 28, 28, 1]}, {"scale": 1 / 255, "offset": -0.5}
    )


def test_scalar_constants_over_a_last_dimension_of_1_take_the_image_rank_with_the_same_results() -> None:
    model = _rescaling()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 28, 28, 1)).astype(np.float32)
    image[0, 0, 0, 0], image[0, 0, 1, 0], image[0, 1, 0, 0] = np.nan, np.inf, 1e-40  # and the odd values
    before = _run(model, {"image": image})
    assert rank_matched_constants(model) == ["scale", "offset"]
    onnx.checker.check_model(model)
    assert _dims(model) == {"scale": [1, 1, 1, 1], "offset": [1, 1, 1, 1]}
    after = _run(model, {"image": image})
    np.testing.assert_array_equal(after[0], before[0])  # NaN where NaN, every other value bit for bit
    assert after[0].tobytes() == before[0].tobytes()
    assert rank_matched_constants(model) == []  # nothing left to change


def test_other_shapes_and_multi_value_constants_are_left_alone() -> None:
    nodes = [
        helper.make_node("Mul", ["rgb", "scale"], ["a"]),  # last dimension 3: onnxruntime's fast path already
        helper.make_node("Add", ["gray", "bias"], ["b"]),  # two values (a per-row bias): not the slow case
        helper.make_node("Relu", ["gray"], ["c"]),
    ]
    model = _model(
        nodes,
        {"rgb": ["N", 4, 4, 3], "gray": ["N", 2, 1]},
        {"a": ["N", 4, 4, 3], "b": ["N", 2, 1], "c": ["N", 2, 1]},
        {"scale": 2.0, "bias": [[1.0], [2.0]]},
    )
    before = _dims(model)
    assert rank_matched_constants(model) == []
    assert _dims(model) == before


def test_a_shared_constant_is_copied_for_the_operator_it_slows_and_kept_for_the_others() -> None:
    nodes = [
        helper.make_node("Mul", ["image", "scale"], ["scaled"]),
        helper.make_node("Mul", ["wide", "scale"], ["wider"]),  # last dimension 5: keeps the scalar
    ]
    model = _model(
        nodes,
        {"image": ["N", 28, 28, 1], "wide": ["N", 5]},
        {"scaled": ["N", 28, 28, 1], "wider": ["N", 5]},
        {"scale": 0.5},
    )
    feed = {
        "image": np.ones((2, 28, 28, 1), np.float32),
        "wide": np.arange(10, dtype=np.float32).reshape(2, 5),
    }
    before = _run(model, feed)
    assert rank_matched_constants(model) == ["scale"]
    assert _dims(model) == {"scale": [], "scale__rank4": [1, 1, 1, 1]}
    assert [list(n.input) for n in model.graph.node] == [["image", "scale__rank4"], ["wide", "scale"]]
    for got, expected in zip(_run(model, feed), before, strict=True):
        assert got.tobytes() == expected.tobytes()


def test_a_constant_every_use_of_which_is_copied_goes() -> None:
    nodes = [
        helper.make_node("Mul", ["image", "scale"], ["a"]),
        helper.make_node("Mul", ["a", "scale"], ["b"]),
    ]
    model = _model(nodes, {"image": ["N", 3, 1]}, {"b": ["N", 3, 1]}, {"scale": 3.0})
    image = np.arange(6, dtype=np.float32).reshape(2, 3, 1)
    before = _run(model, {"image": image})
    assert rank_matched_constants(model) == ["scale"]
    assert _dims(model) == {"scale__rank3": [1, 1, 1]}
    assert _run(model, {"image": image})[0].tobytes() == before[0].tobytes()


def test_a_constant_the_graph_declares_as_an_input_keeps_its_declaration() -> None:
    # Older IR versions list initializers among the graph's inputs, with their shapes (overridable).
    model = _rescaling()
    model.graph.input.append(helper.make_tensor_value_info("scale", FLOAT, []))
    assert rank_matched_constants(model) == ["scale", "offset"]
    assert _dims(model) == {"scale": [], "offset": [1, 1, 1, 1], "scale__rank4": [1, 1, 1, 1]}
    assert list(model.graph.node[0].input) == ["image", "scale__rank4"]
    onnx.checker.check_model(model)


def test_graphs_with_subgraphs_are_left_as_they_are() -> None:
    branch = helper.make_graph(
        [helper.make_node("Mul", ["image", "scale"], ["inner"])],
        "branch",
        [],
        [helper.make_tensor_value_info("inner", FLOAT, ["N", 28, 28, 1])],
    )
    nodes = [
        helper.make_node("Mul", ["image", "scale"], ["scaled"]),
        helper.make_node("If", ["flag"], ["out"], then_branch=branch, else_branch=branch),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("image", FLOAT, ["N", 28, 28, 1]),
            helper.make_tensor_value_info("flag", onnx.TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("out", FLOAT, ["N", 28, 28, 1]),
            helper.make_tensor_value_info("scaled", FLOAT, ["N", 28, 28, 1]),
        ],
        [numpy_helper.from_array(np.asarray(2.0, np.float32), "scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert rank_matched_constants(model) == []
    assert _dims(model) == {"scale": []}


def test_a_graph_shape_inference_refuses_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(model: onnx.ModelProto) -> onnx.ModelProto:
        raise ValueError("Message onnx.ModelProto exceeds maximum protobuf size of 2GB")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", refuse)
    model = _rescaling()
    assert rank_matched_constants(model) == []
    assert _dims(model) == {"scale": [], "offset": []}


def test_an_export_carries_the_rescaling_constants_at_the_image_rank(tiny_run) -> None:
    # tiny-mlp starts with Rescaling(1/255) over [N, 28, 28, 1], as every preset does.
    model = tiny_run.onnx_model
    constants = {t.name: t for t in model.graph.initializer}
    consumers = [
        n for n in model.graph.node if "image" in n.input and n.op_type in ("Mul", "Add", "Sub", "Div")
    ]
    assert consumers, [n.op_type for n in model.graph.node]
    for node in consumers:
        (constant,) = [constants[name] for name in node.input if name in constants]
        assert list(constant.dims) == [1, 1, 1, 1], (node.op_type, list(constant.dims))

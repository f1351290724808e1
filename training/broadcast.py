"""ONNX graph rewrites that change how onnxruntime runs a model, never what it computes.

onnxruntime broadcasts a single-value constant over an operand whose last dimension is 1 one element at a
time: an ``[N, 28, 28, 1]`` grayscale image times a scalar, the ``Rescaling`` layer every preset starts
with as tf2onnx writes it, took 260-276 µs for 32 images against 8.1 µs with the constant given as
``[1, 1, 1, 1]`` (and 7.4 µs over ``[32, 784]``). In the shipped models that one node was 14 % of
``mnist-cnn``'s compute and over half of ``mnist-mlp``'s (docs/hotpath.md). Exports
(:func:`training.export.convert`) and ONNX imports (:func:`training.onnxmodel.prepare`) both pass
through :func:`rank_matched_constants`.
"""

from __future__ import annotations

from collections import Counter

import onnx

#: Element-wise operators with numpy-style (multidirectional) broadcasting of their two inputs.
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div"})


def rank_matched_constants(model: onnx.ModelProto) -> list[str]:
    """Give each single-value constant of an element-wise operator whose other operand ends in a dimension
    of 1 that operand's rank, by leading dimensions of 1, in ``model`` itself. Returns the names of the
    constants changed (or copied), in graph order.

    That is the case onnxruntime broadcasts one element at a time (see the module docstring); with the
    constant at the operand's rank it takes its fast path. Broadcasting aligns shapes from the last
    dimension, so leading 1s change neither the value nor any result, bit for bit. A constant that other
    nodes share, or that the graph declares as an input or describes in ``value_info``, is copied first,
    not changed. Graphs with subgraphs (``If``, ``Loop``), and graphs onnx's shape inference refuses, are
    left as they are: the rewrite only ever saves time.
    """
    graph = model.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in graph.node
        for a in n.attribute
    ):
        return []
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # onnx cannot infer this graph (over 2 GB, an unknown operator set): no rewrite
        return []
    shapes = {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)
        if v.type.tensor_type.HasField("shape")
    }
    constants = {t.name: t for t in graph.initializer}
    declared = {v.name for v in (*graph.input, *graph.value_info)}
    uses = Counter(name for node in graph.node for name in node.input)
    copied: set[str] = set()
    changed: list[str] = []
    for node in graph.node:
        if node.op_type not in _ELEMENTWISE or len(node.input) != 2:
            continue
        for i, name in enumerate(node.input):
            constant, other = constants.get(name), shapes.get(node.input[1 - i])
            if constant is None or not other or other[-1] != 1 or len(constant.dims) >= len(other):
                continue
            if any(d != 1 for d in constant.dims):  # more than one value: not the slow case
                continue
            rank = len(other)
            if uses[name] > 1 or name in declared:
                copy = onnx.TensorProto()
                copy.CopyFrom(constant)
                copy.name = f"{name}__rank{rank}"
                if copy.name not in constants:
                    graph.initializer.append(copy)
                    constants[copy.name] = graph.initializer[-1]
                node.input[i] = copy.name
                constant = constants[copy.name]
                copied.add(name)
            del constant.dims[:]
            constant.dims.extend([1] * rank)
            if name not in changed:
                changed.append(name)
    used = {name for node in graph.node for name in node.input} | {v.name for v in graph.output}
    for unused in [t for t in graph.initializer if t.name in copied - used - declared]:
        graph.initializer.remove(unused)  # an original whose every use now reads a copy
    return changed

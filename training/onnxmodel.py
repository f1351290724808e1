"""An ONNX model offered for import: its signature read from the graph, checked against what the service
can serve, made explicit, and tried out.

The service serves image classifiers with one float32 input ``[N, H, W, C]`` (channels last, C = 1 or 3,
N the dynamic batch dimension: requests are batched together) and one float32 output ``[N, K]`` of class
probabilities. Anything else is refused with :class:`UnsupportedModel`, saying what is supported.

What the graph leaves open is taken from the user's statement and written into the graph, so that the
published model and its metadata agree exactly: free H, W or C dimensions are pinned (``--image-size``,
``--color``), a free K is pinned to the number of classes the model returns, and ``--softmax`` appends a
Softmax to a model that returns logits. Then the model is run: it must return probabilities (each row in
0..1, summing to 1) and answer each image the same whether it comes alone or in a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from service.contract import Preprocessing
from training.broadcast import rank_matched_constants
from training.errors import UnsupportedModel, UsageError

SUPPORTED = (
    "the service serves image classifiers with one float32 input [N, H, W, C] (channels last, C = 1 for "
    "grayscale or 3 for RGB, N a dynamic batch dimension) and one float32 output [N, K] of class "
    "probabilities"
)
#: Largest difference tolerated between an image's answer alone and inside a batch, and in row sums.
TOLERANCE = 1e-4
SUM_TOLERANCE = 1e-3

Dim = int | None


@dataclass(frozen=True)
class Signature:
    """The served signature of an import: names, ``[-1, H, W, C]`` in and ``[-1, K]`` out."""

    input_name: str
    output_name: str
    input_shape: tuple[int, int, int]
    num_classes: int

    def as_metadata(self) -> dict[str, Any]:
        return {
            "inputs": [{"name": self.input_name, "datatype": "FP32", "shape": [-1, *self.input_shape]}],
            "outputs": [{"name": self.output_name, "datatype": "FP32", "shape": [-1, self.num_classes]}],
        }


@dataclass
class Prepared:
    """A model ready to publish: its bytes, signature, and the edits made to its graph."""

    model: onnx.ModelProto
    signature: Signature
    changes: list[str] = field(default_factory=list)

    def serialize(self) -> bytes:
        return self.model.SerializeToString()


def load(data: bytes, source: str) -> onnx.ModelProto:
    """Parse ONNX ``data``; :class:`UsageError` naming ``source`` when it is not a valid model."""
    try:
        model = onnx.load_model_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, onnx ValidationError, ...
        raise UsageError(f"{source}: not a valid ONNX model ({_first_line(exc)})") from None
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _dims(value: onnx.ValueInfoProto) -> list[Dim] | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]


def _show(dims: list[Dim] | None) -> str:
    return "unknown" if dims is None else "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def input_hwc(model: onnx.ModelProto) -> tuple[str, tuple[Dim, Dim, Dim]]:
    """The one image input's name and ``(H, W, C)`` as the graph states them (``None`` where free)."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise UnsupportedModel(f"the model has {len(inputs)} inputs ({names}); {SUPPORTED}")
    image = inputs[0]
    if image.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(image.type.tensor_type.elem_type)
        raise UnsupportedModel(f"input '{image.name}' is {kind}; {SUPPORTED}")
    return image.name, image_hwc(image.name, _dims(image))


def image_hwc(name: str, dims: list[Dim] | None) -> tuple[Dim, Dim, Dim]:
    """``(H, W, C)`` of an image input shaped ``dims`` (``None`` for a free dimension); refused unless it
    is ``[N, H, W, C]`` with N free and C 1, 3 or free."""
    if dims is None or len(dims) != 4:
        raise UnsupportedModel(f"input '{name}' has shape {_show(dims)}; {SUPPORTED}")
    batch, d1, d2, d3 = dims
    if batch is not None:
        raise UnsupportedModel(
            f"input '{name}' has a fixed batch dimension {_show(dims)}; the service batches requests "
            "together, so the first dimension must be dynamic: re-export with a free batch axis "
            "(tf2onnx: tf.TensorSpec((None, H, W, C)); torch.onnx.export: dynamic_axes={name: {0: 'batch'}})"
        )
    if d3 not in (1, 3):
        if d1 in (1, 3):
            raise UnsupportedModel(
                f"input '{name}' {_show(dims)} is channels-first (NCHW); the service requires "
                "channels-last NHWC [N, H, W, C]: re-export it channels-last (for a PyTorch model, make "
                "x.permute(0, 3, 1, 2) the first operation of the exported forward)"
            )
        if d3 is not None:
            raise UnsupportedModel(f"input '{name}' has {d3} channels {_show(dims)}; {SUPPORTED}")
    return d1, d2, d3


def check_scores(name: str, dims: list[Dim] | None) -> None:
    """Refuse an output whose shape is known and is not ``[N, K]`` with N free."""
    if dims is not None and (len(dims) != 2 or dims[0] is not None):
        raise UnsupportedModel(f"output '{name}' has shape {_show(dims)}; {SUPPORTED}")


def preprocessing_for(
    hwc: tuple[Dim, Dim, Dim],
    *,
    image_size: tuple[int, int] | None,
    color: str | None,
    input_range: tuple[float, float],
    resize: str,
) -> Preprocessing:
    """The ``preprocessing`` entry from the graph's dimensions and the user's statements, which must
    agree with the graph where it fixes them and fill in what it leaves free."""
    height, width, channels = hwc
    if channels is None:
        if color is None:
            raise UsageError(
                "the model's channel count is not fixed in its graph: state --color grayscale|rgb"
            )
        channels = 1 if color == "grayscale" else 3
    graph_color = "grayscale" if channels == 1 else "rgb"
    if color is not None and color != graph_color:
        raise UsageError(f"--color {color} disagrees with the model, whose input has {channels} channel(s)")
    if height is None or width is None:
        if image_size is None:
            raise UsageError(
                "the model's input height and width are not fixed in its graph: state --image-size HxW"
            )
        height = height or image_size[0]
        width = width or image_size[1]
    if image_size is not None and image_size != (height, width):
        raise UsageError(
            f"--image-size {image_size[0]}x{image_size[1]} disagrees with the model's input {height}x{width}"
        )
    entry = {
        "height": height,
        "width": width,
        "color": graph_color,
        "input_range": input_range,
        "resize": resize,
    }
    try:
        return Preprocessing.model_validate(entry)
    except ValueError as exc:
        raise UsageError(f"invalid image contract: {exc}") from None


def prepare(model: onnx.ModelProto, pre: Preprocessing, labels: int, *, softmax: bool = False) -> Prepared:
    """Check the output, pin free dimensions and append a Softmax when asked; then try the model."""
    input_name, _ = input_hwc(model)
    outputs = list(model.graph.output)
    if len(outputs) != 1:
        names = ", ".join(o.name for o in outputs)
        raise UnsupportedModel(f"the model has {len(outputs)} outputs ({names}); {SUPPORTED}")
    output = outputs[0]
    out_dims = _dims(output)
    if output.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(output.type.tensor_type.elem_type)
        raise UnsupportedModel(f"output '{output.name}' is {kind}; {SUPPORTED}")
    check_scores(output.name, out_dims)

    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    prepared = Prepared(edited, Signature(input_name, output.name, (pre.height, pre.width, pre.channels), 0))
    image = next(i for i in edited.graph.input if i.name == input_name)
    for axis, value in zip((1, 2, 3), (pre.height, pre.width, pre.channels), strict=True):
        dim = image.type.tensor_type.shape.dim[axis]
        if not dim.HasField("dim_value"):
            dim.dim_value = value
            prepared.changes.append(f"input '{input_name}' dimension {axis} pinned to {value}")
    if softmax:
        _append_softmax(edited, output.name)
        prepared.changes.append(f"Softmax appended to output '{output.name}' (--softmax)")
    reshaped = rank_matched_constants(edited)
    if reshaped:
        names = ", ".join(f"'{name}'" for name in reshaped)
        prepared.changes.append(f"single-value constants {names} given their operand's rank (same results)")

    session = open_session(edited)
    probe = np.random.default_rng(0).uniform(0, 1, (3, pre.height, pre.width, pre.channels))
    black, white = pre.input_range
    probe = (black + probe * (white - black)).astype(np.float32)
    (scores,) = session.run([output.name], {input_name: probe})
    if scores.ndim != 2 or scores.shape[0] != len(probe):
        raise UnsupportedModel(
            f"output '{output.name}' came back {list(scores.shape)} for 3 images; {SUPPORTED}"
        )
    num_classes = int(scores.shape[1])
    if num_classes != labels:
        raise UsageError(f"the model scores {num_classes} classes, but {labels} labels were given (--labels)")
    out_dim = edited.graph.output[0].type.tensor_type.shape.dim
    if len(out_dim) == 2 and not out_dim[1].HasField("dim_value"):
        out_dim[1].dim_value = num_classes
        prepared.changes.append(f"output '{output.name}' dimension 1 pinned to {num_classes}")
    prepared.signature = Signature(
        input_name, output.name, (pre.height, pre.width, pre.channels), num_classes
    )
    check_behaviour(open_session(edited) if prepared.changes else session, prepared.signature, probe, softmax)
    return prepared


def _append_softmax(model: onnx.ModelProto, output: str) -> None:
    graph = model.graph
    taken = {n for node in graph.node for n in (*node.input, *node.output)}
    logits = f"{output}_logits"
    while logits in taken:
        logits += "_"
    if not any(output in node.output for node in graph.node):
        raise UnsupportedModel(f"output '{output}' is not computed by a node; cannot append a Softmax")
    for node in graph.node:
        node.output[:] = [logits if n == output else n for n in node.output]
        node.input[:] = [logits if n == output else n for n in node.input]
    graph.node.append(helper.make_node("Softmax", [logits], [output], axis=1, name=f"{output}_softmax"))


def open_session(model: onnx.ModelProto) -> ort.InferenceSession:
    """An onnxruntime CPU session; :class:`UnsupportedModel` when onnxruntime refuses the model."""
    try:
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise UnsupportedModel(
            f"onnxruntime {ort.__version__} cannot load the model: {_first_line(exc)}"
        ) from None


def check_behaviour(
    session: ort.InferenceSession, signature: Signature, images: np.ndarray, softmax: bool
) -> None:
    """Refuse a model that does not return probabilities, or whose answer for an image depends on the
    other images in its batch (the service batches requests together)."""
    name, out = signature.input_name, signature.output_name
    try:
        (batched,) = session.run([out], {name: images})
        alone = np.concatenate([session.run([out], {name: images[i : i + 1]})[0] for i in range(len(images))])
    except Exception as exc:  # onnxruntime's own error types
        raise UnsupportedModel(
            f"the model fails on a batch of {len(images)} images: {_first_line(exc)}"
        ) from None
    if not np.isfinite(batched).all():
        raise UnsupportedModel("the model returns NaN or infinite scores")
    sums = batched.sum(axis=1)
    if batched.min() < -TOLERANCE or batched.max() > 1 + TOLERANCE or np.abs(sums - 1).max() > SUM_TOLERANCE:
        hint = "" if softmax else "; if it returns logits, pass --softmax to append a Softmax"
        raise UnsupportedModel(
            f"output '{out}' is not class probabilities (values {batched.min():.3g}..{batched.max():.3g}, "
            f"row sums {sums.min():.4g}..{sums.max():.4g}){hint}"
        )
    difference = float(np.abs(batched - alone).max())
    if difference > TOLERANCE:
        raise UnsupportedModel(
            f"the model answers an image differently inside a batch than alone (max difference "
            f"{difference:.3g}); the service batches requests together, so it cannot serve this model"
        )


def run(
    session: ort.InferenceSession, signature: Signature, images: np.ndarray, batch: int = 256
) -> np.ndarray:
    """Probabilities for float32 ``images`` already in the model's input range, ``batch`` rows at a time."""
    chunks = [
        session.run([signature.output_name], {signature.input_name: images[start : start + batch]})[0]
        for start in range(0, len(images), batch)
    ]
    return np.concatenate(chunks).astype(np.float32)


def opset_of(model: onnx.ModelProto) -> int:
    """The default-domain opset the model was exported with."""
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

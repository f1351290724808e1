"""Importing models trained elsewhere: a real foreign Keras model as ONNX (exported with tf2onnx directly),
as a ``.keras`` file and as a SavedModel; hand-built ONNX graphs for everything the service cannot serve."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from service.core.runtime import load_model
from training.errors import PromotionRefused, UnsupportedModel, UsageError
from training.export import MAX_ABS_DIFF, PARITY_MIN_IMAGES
from training.importer import ImportConfig, detect_format, import_model
from training.publish import sha256_hex

from .conftest import CIFAR5, Folders, Foreign

pytestmark = pytest.mark.slow  # trains the foreign model once, converts it three ways

LABELS5 = CIFAR5


def config(path: Path, **overrides: Any) -> ImportConfig:
    base = ImportConfig(path=path, name="foreign", labels=LABELS5, input_range=(0.0, 1.0), resize="stretch")
    return replace(base, **overrides)


def eval_files(folder: Path) -> tuple[list[Path], np.ndarray]:
    files = sorted(folder.glob("*/*.jpg"), key=lambda p: (p.parent.name, p.name))
    return files, np.array([LABELS5.index(p.parent.name) for p in files])


def onnx_probabilities(model: Path | bytes, name: str, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(
        model.read_bytes() if isinstance(model, Path) else model, providers=["CPUExecutionProvider"]
    )
    return np.asarray(session.run(None, {name: images.astype(np.float32)})[0])


def test_foreign_onnx_is_published_as_it_is_and_evaluated(
    foreign: Foreign, folders: Folders, tmp_path: Path
) -> None:
    repository = tmp_path / "models"
    outcome = import_model(
        config(foreign.onnx, eval_images=folders.cifar, repository=repository, command="cmd")
    )
    version = repository / "foreign" / "1"
    assert outcome.published is not None and outcome.published.path == version
    model_bytes = (version / "model.onnx").read_bytes()
    assert model_bytes == foreign.onnx.read_bytes()  # nothing to change: the user's graph, byte for byte

    metadata = json.loads((version / "metadata.json").read_text())
    assert metadata["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 32, 32, 3]}]
    assert metadata["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 5]}]
    assert metadata["labels"] == list(LABELS5)
    assert metadata["sha256"] == sha256_hex(model_bytes)
    assert metadata["preprocessing"] == {
        "height": 32,
        "width": 32,
        "color": "rgb",
        "input_range": [0.0, 1.0],
        "resize": "stretch",
    }
    assert metadata["import"]["format"] == "onnx"
    assert metadata["import"]["changes"] == []
    assert metadata["import"]["source_sha256"] == sha256_hex(foreign.onnx.read_bytes())
    assert metadata["import"]["command"] == "cmd"
    assert metadata["opset"] == 17
    assert "parity" not in metadata

    # The evaluation, recomputed independently: decode each file, scale to 0..1, run the file.
    files, labels = eval_files(folders.cifar)
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]) / 255.0
    predicted = onnx_probabilities(foreign.onnx, "pixels", images).argmax(axis=1)
    confusion = np.zeros((5, 5), dtype=int)
    np.add.at(confusion, (labels, predicted), 1)
    metrics = metadata["metrics"]
    assert metrics["n_images"] == 300
    assert metrics["accuracy"] == pytest.approx(float((predicted == labels).mean()))
    assert metrics["confusion_matrix"] == confusion.tolist()
    assert metrics["accuracy"] > 0.3  # a real model: well above the 0.2 of chance
    assert list(metrics["per_class_accuracy"]) == list(LABELS5)
    assert (version / "report" / "confusion_matrix.png").is_file()

    served = load_model(version, providers=["CPUExecutionProvider"])  # the service's own loader accepts it
    assert served.signature.inputs[0].name == "pixels"


@pytest.mark.parametrize("kind", ["keras", "saved_model"])
def test_keras_and_saved_model_go_through_the_parity_gate(
    kind: str, foreign: Foreign, folders: Folders, tmp_path: Path
) -> None:
    path = foreign.keras if kind == "keras" else foreign.saved_model
    assert detect_format(path) == ("keras" if kind == "keras" else "savedmodel")
    outcome = import_model(config(path, eval_images=folders.cifar, repository=tmp_path))
    metadata = json.loads((tmp_path / "foreign" / "1" / "metadata.json").read_text())
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 32, 32, 3]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 5]}]
    assert metadata["parity"]["n_images"] >= PARITY_MIN_IMAGES
    assert metadata["parity"]["max_abs_diff"] <= MAX_ABS_DIFF
    assert metadata["import"]["changes"][0].startswith("exported from ")
    assert {"tensorflow", "tf2onnx", "onnx"} <= set(metadata["versions"])

    files, _ = eval_files(folders.cifar)
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files[:64]]) / 255.0
    exported = onnx_probabilities(outcome.prepared.serialize(), "image", images)
    keras_probabilities = np.asarray(foreign.model(images.astype(np.float32), training=False))  # type: ignore[operator]
    assert np.abs(exported - keras_probabilities).max() <= MAX_ABS_DIFF
    onnx_import = import_model(config(foreign.onnx, eval_images=folders.cifar))
    assert outcome.evaluation is not None and onnx_import.evaluation is not None
    assert abs(outcome.evaluation.accuracy - onnx_import.evaluation.accuracy) <= 1 / 300


def classifier(
    tmp_path: Path,
    dims: tuple[int | str, ...] = ("N", 8, 8, 3),
    *,
    classes: int = 5,
    softmax: bool = True,
    second_input: bool = False,
    batch_mixing: bool = False,
    out_dims: tuple[int | str, ...] | None = None,
    elem: int = TensorProto.FLOAT,
) -> Path:
    """A small NHWC classifier: mean over H and W, a dense layer, softmax; with the variations asked for."""
    channels_first = len(dims) == 4 and dims[1] == 3 and dims[3] != 3
    spatial = [2, 3] if channels_first else list(range(1, len(dims) - 1))
    channels = 3
    weight = np.random.default_rng(0).normal(0, 1, (channels, classes)).astype(np.float32)
    nodes = []
    source = "x"
    if elem != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT))
        source = "xf"
    nodes += [
        helper.make_node("ReduceMean", [source], ["pooled"], axes=spatial, keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
    ]
    last = "logits"
    if batch_mixing:  # subtract the batch mean: each answer depends on the other images
        nodes.append(helper.make_node("ReduceMean", ["logits"], ["batch_mean"], axes=[0], keepdims=1))
        nodes.append(helper.make_node("Sub", ["logits", "batch_mean"], ["mixed"]))
        last = "mixed"
    if out_dims is not None and len(out_dims) == 3:
        nodes.append(helper.make_node("Unsqueeze", [last, "axis2"], ["expanded"]))
        last = "expanded"
    nodes.append(
        helper.make_node(
            "Softmax" if softmax else "Identity", [last], ["y"], **({"axis": 1} if softmax else {})
        )
    )
    inputs = [helper.make_tensor_value_info("x", elem, list(dims))]
    if second_input:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1]))
    graph = helper.make_graph(
        nodes,
        "handmade",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_dims or ("N", classes)))],
        initializer=[
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        ],
    )
    opsets = [helper.make_opsetid("", 17)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    path = tmp_path / "handmade.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ({"second_input": True}, "the model has 2 inputs (x, mask); the service serves image classifiers"),
        ({"dims": (1, 8, 8, 3)}, "input 'x' has a fixed batch dimension [1, 8, 8, 3]"),
        ({"dims": ("N", 3, 8, 8)}, "is channels-first (NCHW); the service requires channels-last NHWC"),
        ({"dims": ("N", 8, 8, 4)}, "input 'x' has 4 channels [?, 8, 8, 4]"),
        ({"dims": ("N", 64, 3)}, "input 'x' has shape [?, 64, 3]"),
        ({"elem": TensorProto.UINT8}, "input 'x' is UINT8"),
        ({"out_dims": ("N", 5, 1)}, "output 'y' has shape [?, 5, 1]"),
        ({"softmax": False}, "is not class probabilities (values"),
        ({"batch_mixing": True}, "answers an image differently inside a batch than alone"),
    ],
)
def test_what_the_service_cannot_serve_is_refused(
    tmp_path: Path, variant: dict[str, Any], message: str
) -> None:
    path = classifier(tmp_path, **variant)
    with pytest.raises(UnsupportedModel) as caught:
        import_model(config(path, repository=tmp_path / "models"))
    assert message in str(caught.value)
    assert not (tmp_path / "models").exists()


def test_logits_get_a_softmax_when_asked(tmp_path: Path) -> None:
    path = classifier(tmp_path, softmax=False)
    with pytest.raises(UnsupportedModel, match="if it returns logits, pass --softmax"):
        import_model(config(path))
    outcome = import_model(config(path, softmax=True, repository=tmp_path / "models"))
    assert outcome.prepared.changes == ["Softmax appended to output 'y' (--softmax)"]
    images = np.random.default_rng(1).uniform(0, 1, (4, 8, 8, 3))
    logits = onnx_probabilities(path, "x", images)
    published = onnx_probabilities(tmp_path / "models" / "foreign" / "1" / "model.onnx", "x", images)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert np.allclose(published, expected, atol=1e-6)


def test_free_dimensions_need_a_statement_and_are_pinned(tmp_path: Path) -> None:
    path = classifier(tmp_path, ("N", "h", "w", "c"), out_dims=("N", "k"))
    with pytest.raises(UsageError, match="not fixed in its graph: state --color"):
        import_model(config(path))
    with pytest.raises(
        UsageError, match="height and width are not fixed in its graph: state --image-size HxW"
    ):
        import_model(config(path, color="rgb"))
    outcome = import_model(config(path, color="rgb", image_size=(20, 24), repository=tmp_path / "models"))
    assert outcome.prepared.changes == [
        "input 'x' dimension 1 pinned to 20",
        "input 'x' dimension 2 pinned to 24",
        "input 'x' dimension 3 pinned to 3",
        "output 'y' dimension 1 pinned to 5",
    ]
    version = tmp_path / "models" / "foreign" / "1"
    metadata = json.loads((version / "metadata.json").read_text())
    assert metadata["inputs"][0]["shape"] == [-1, 20, 24, 3]
    assert metadata["outputs"][0]["shape"] == [-1, 5]
    assert load_model(version, providers=["CPUExecutionProvider"]).signature.inputs[0].shape == (
        -1,
        20,
        24,
        3,
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"color": "grayscale"}, "--color grayscale disagrees with the model, whose input has 3 channel(s)"),
        ({"image_size": (9, 8)}, "--image-size 9x8 disagrees with the model's input 8x8"),
        ({"labels": ("a", "b", "c")}, "the model scores 5 classes, but 3 labels were given"),
        ({"labels": ("a", "a", "b", "c", "d")}, "--labels needs at least two labels, all different"),
    ],
)
def test_statements_that_contradict_the_model_are_refused(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(UsageError) as caught:
        import_model(config(classifier(tmp_path), **overrides))
    assert message in str(caught.value)


def test_unknown_and_invalid_files(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(UsageError, match="unknown model format; import an ONNX file"):
        import_model(config(tmp_path / "model.pt"))
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(UsageError, match=r"bad\.onnx: not a valid ONNX model"):
        import_model(config(tmp_path / "bad.onnx"))
    (tmp_path / "dir").mkdir()
    with pytest.raises(UsageError, match=r"a directory without saved_model\.pb is not a SavedModel"):
        import_model(config(tmp_path / "dir"))
    with pytest.raises(UsageError, match="no such file or directory"):
        import_model(config(tmp_path / "missing.onnx"))
    (tmp_path / "broken.keras").write_bytes(b"zip?")
    with pytest.raises(UsageError, match="cannot load the Keras model"):
        import_model(config(tmp_path / "broken.keras"))


def test_promotion_and_signature_guards(foreign: Foreign, folders: Folders, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    import_model(config(foreign.onnx, eval_images=folders.cifar, repository=repository))
    metadata_path = repository / "foreign" / "1" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["metrics"]["accuracy"] = 1.0
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(PromotionRefused, match="points below version 1"):
        import_model(config(foreign.onnx, eval_images=folders.cifar, repository=repository))
    with pytest.raises(PromotionRefused, match=r"has a recorded test accuracy .* not evaluated"):
        import_model(config(foreign.onnx, repository=repository))
    assert sorted(p.name for p in (repository / "foreign").iterdir()) == ["1"]
    forced = import_model(config(foreign.onnx, repository=repository, force=True))
    assert forced.published is not None and forced.published.version == 2
    assert "metrics" not in json.loads((repository / "foreign" / "2" / "metadata.json").read_text())

    other = classifier(tmp_path, ("N", 32, 32, 3))
    with pytest.raises(
        PromotionRefused, match=r"signature \(x \[-1, 32, 32, 3\] -> y \[-1, 5\]\) differs from version 2"
    ):
        import_model(config(other, repository=repository, force=False))
    assert sorted(p.name for p in (repository / "foreign").iterdir()) == ["1", "2"]


def test_eval_folder_classes_must_be_labels(foreign: Foreign, folders: Folders, tmp_path: Path) -> None:
    from training.errors import DataError

    labels = ("airplane", "automobile", "bird", "cat", "dog")
    with pytest.raises(DataError, match="class folder\\(s\\) deer are not among the model's labels"):
        import_model(config(foreign.onnx, labels=labels, eval_images=folders.cifar))
    single = tmp_path / "cats"
    (single / "cat").mkdir(parents=True)
    for f in sorted((folders.cifar / "cat").glob("*.jpg"))[:10]:
        (single / "cat" / f.name).write_bytes(f.read_bytes())
    outcome = import_model(config(foreign.onnx, eval_images=single))
    assert outcome.evaluation is not None
    assert outcome.evaluation.n_images == 10
    assert outcome.evaluation.confusion.sum(axis=1).tolist() == [0, 0, 0, 10, 0]


def test_onnx_graph_checker_sees_a_valid_model_after_edits(tmp_path: Path) -> None:
    outcome = import_model(
        config(classifier(tmp_path, ("N", "h", 8, 3), softmax=False), softmax=True, image_size=(8, 8))
    )
    onnx.checker.check_model(outcome.prepared.model, full_check=True)

"""``make models`` (bench/reference_models.py --install): a retrained reference version becomes the shipped
one with its training artifact, keeping the shipped files when the exported model is the same."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench.reference_models import install, same_model


def _onnx(weight: float, constant_name: str) -> bytes:
    """``y = x * w``, with ``w`` stored under ``constant_name`` (tf2onnx's names vary from run to run)."""
    w = numpy_helper.from_array(np.full((1, 2), weight, dtype=np.float32), constant_name)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", constant_name], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        [w],
    )
    model: bytes = helper.make_model(graph).SerializeToString()
    return model


def _version(root: Path, name: str, onnx_bytes: bytes, command: str) -> Path:
    version = root / name / "1"
    (version / "train").mkdir(parents=True)
    (version / "model.onnx").write_bytes(onnx_bytes)
    (version / "train" / "model.keras").write_bytes(b"keras " + command.encode())
    metadata = {"name": name, "training": {"command": command}}
    (version / "metadata.json").write_text(json.dumps(metadata))
    return version


def test_same_model_ignores_names_but_not_weights(tmp_path: Path) -> None:
    paths = {}
    for key, weight, name in (("a", 2.0, "const__25"), ("b", 2.0, "const__27"), ("c", 3.0, "const__25")):
        paths[key] = tmp_path / f"{key}.onnx"
        paths[key].write_bytes(_onnx(weight, name))
        onnx.checker.check_model(str(paths[key]))
    assert same_model(paths["a"], paths["b"])
    assert not same_model(paths["a"], paths["c"])


def test_same_export_adds_only_the_training_artifact(tmp_path: Path) -> None:
    scratch, models = tmp_path / "scratch", tmp_path / "models"
    _version(scratch, "m", _onnx(2.0, "const__27"), f"train --publish {scratch}")
    shipped = models / "m" / "1"
    shipped.mkdir(parents=True)
    (shipped / "model.onnx").write_bytes(_onnx(2.0, "const__25"))
    (shipped / "metadata.json").write_text('{"shipped": true}')

    assert install("m", scratch, models) == "model.onnx the same: train/ added"
    assert (shipped / "train" / "model.keras").read_bytes() == f"keras train --publish {scratch}".encode()
    assert (shipped / "metadata.json").read_text() == '{"shipped": true}'
    assert (shipped / "model.onnx").read_bytes() == _onnx(2.0, "const__25")
    assert sorted(p.name for p in (models / "m").iterdir()) == ["1"]  # nothing staged left behind


def test_different_export_replaces_the_version_and_names_models_in_its_command(tmp_path: Path) -> None:
    scratch, models = tmp_path / "scratch", tmp_path / "models"
    _version(scratch, "m", _onnx(3.0, "w"), f"python -m training train --publish {scratch}")
    _version(models, "m", _onnx(2.0, "w"), "python -m training train --publish models/")

    assert install("m", scratch, models).startswith("model.onnx differs: version replaced")
    shipped = models / "m" / "1"
    assert (shipped / "model.onnx").read_bytes() == _onnx(3.0, "w")
    command = json.loads((shipped / "metadata.json").read_text())["training"]["command"]
    assert command == "python -m training train --publish models/"
    assert (shipped / "train" / "model.keras").is_file()

"""service.contract: names, versions, paths, and metadata.json as the documented schema says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import pytest

from service.contract import (
    MODEL_NAME_RE,
    PLATFORM,
    Datatype,
    Metadata,
    MetadataError,
    Preprocessing,
    metadata_json,
    metadata_schema,
    parse_metadata,
    parse_version,
    read_metadata,
    valid_model_name,
    version_dir,
)
from service.core.signature import DATATYPES
from tests.helpers.data import MODELS, ROOT
from tests.helpers.modelfactory import write_model_version

SCHEMA = ROOT / "docs" / "metadata.schema.json"
SHIPPED = {
    "mnist-mlp": ("digit", "grayscale", 28),
    "mnist-cnn": ("digit", "grayscale", 28),
    "fashion-cnn": ("stretch", "grayscale", 28),
    "cifar10-cnn": ("stretch", "rgb", 32),
}


def document(**changes: Any) -> dict[str, Any]:
    """A valid metadata document (mnist-cnn's), with top-level keys replaced (None: removed). A new
    ``sha256`` is also what its file list records for model.onnx, unless ``files`` is given."""
    raw: dict[str, Any] = json.loads((MODELS / "mnist-cnn" / "1" / "metadata.json").read_text())
    if isinstance(changes.get("sha256"), str) and "files" in raw and "files" not in changes:
        raw["files"] = {**raw["files"], "model.onnx": changes["sha256"].lower()}
    for key, value in changes.items():
        if value is None:
            raw.pop(key)
        else:
            raw[key] = value
    return raw


def refusal(doc: Any) -> str:
    with pytest.raises(MetadataError) as info:
        parse_metadata(doc)
    return str(info.value)


# ---- names and versions -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "0", "mnist-cnn", "cifar10_cnn", "a" * 64, "9-_"])
def test_valid_model_names(name: str) -> None:
    assert valid_model_name(name)
    assert MODEL_NAME_RE.fullmatch(name)


@pytest.mark.parametrize(
    "name",
    ["", "A", "Mnist", "-a", "_a", ".a", ".tmp-1", "a" * 65, "a/b", "..", "a.b", "a b", "é", "a\n", "a\x00"],
)
def test_invalid_model_names(name: str) -> None:
    assert not valid_model_name(name)


@pytest.mark.parametrize(
    ("text", "version"), [("1", 1), ("10", 10), ("123456789012345678", 123456789012345678)]
)
def test_parse_version(text: str, version: int) -> None:
    assert parse_version(text) == version


@pytest.mark.parametrize(
    "text", ["", "0", "01", "-1", "+1", "1.0", " 1", "1 ", "1_0", "x", ".tmp-1", "\u0663", "\u00b2", "1" * 19]
)
def test_parse_version_refuses_non_canonical(text: str) -> None:
    assert parse_version(text) is None


# ---- paths ----------------------------------------------------------------------------------------------


def test_version_dir(tmp_path: Path) -> None:
    assert version_dir(tmp_path, "mnist-cnn", 3) == tmp_path / "mnist-cnn" / "3"


@pytest.mark.parametrize("name", ["../x", "..", "A", "", "a/b", "/etc"])
def test_version_dir_refuses_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="invalid model name"):
        version_dir(tmp_path, name, 1)


@pytest.mark.parametrize("version", [0, -1, True, "3", 1.0])
def test_version_dir_refuses_bad_versions(tmp_path: Path, version: object) -> None:
    with pytest.raises(ValueError, match="invalid model version"):
        version_dir(tmp_path, "m", version)  # type: ignore[arg-type]


# ---- metadata.json ------------------------------------------------------------------------------------


def test_checked_in_schema_is_the_generated_one() -> None:
    # Regenerate with: python -m service.contract > docs/metadata.schema.json
    assert json.loads(SCHEMA.read_text()) == metadata_schema(), "docs/metadata.schema.json is stale"


def test_datatypes_of_the_contract_are_those_the_service_maps() -> None:
    assert set(get_args(Datatype)) == set(DATATYPES)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_models_keep_the_contract(name: str) -> None:
    path = MODELS / name / "1" / "metadata.json"
    metadata, raw = read_metadata(path)
    resize, color, size = SHIPPED[name]
    assert metadata.preprocessing == Preprocessing(
        height=size, width=size, color=color, input_range=(0.0, 255.0), resize=resize
    )
    assert metadata.platform == PLATFORM
    # Written through the contract, a document comes back byte for byte.
    assert metadata_json(metadata) == path.read_bytes()
    assert raw == json.loads(path.read_text())


def test_round_trip_and_unknown_top_level_keys_are_kept() -> None:
    metadata = parse_metadata(document(source="imported from elsewhere"))
    again = parse_metadata(json.loads(metadata_json(metadata)))
    assert again == metadata
    assert json.loads(metadata_json(metadata))["source"] == "imported from elsewhere"


def test_optional_records_may_be_absent() -> None:
    minimal = {key: document()[key] for key in ("name", "version", "platform", "inputs", "outputs")}
    minimal |= {key: document()[key] for key in ("labels", "preprocessing", "sha256")}
    metadata = parse_metadata(minimal)
    assert metadata.metrics is None and metadata.training is None
    assert set(json.loads(metadata_json(metadata))) == set(minimal)


def test_sha256_is_read_in_lower_case() -> None:
    assert parse_metadata(document(sha256="AB" * 32)).sha256 == "ab" * 32


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"preprocessing": None}, "missing key 'preprocessing'"),
        ({"name": "Bad Name"}, "'name' 'Bad Name' is not a valid model name"),
        ({"version": 0}, "'version' must be positive, got 0"),
        ({"opset": "18"}, "'opset' must be of type int, got str"),
        (
            {"inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 28, 28, 1], "x": 1}]},
            "unknown key",
        ),
        (
            {"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 28, 28, 1]}] * 2},
            "'inputs' has duplicate names",
        ),
        ({"metrics": {"accuracy": 1.5}}, "metrics: accuracy"),
        ({"preprocessing": {"height": 28, "width": 28, "color": "rgb", "resize": "digit"}}, "disagrees"),
        (
            {"preprocessing": {"height": 32, "width": 28, "color": "grayscale", "resize": "digit"}},
            "disagrees",
        ),
        ({"preprocessing": {"height": 28, "width": 28, "color": "grayscale", "resize": "fit"}}, "'fit'"),
        ({"preprocessing": {"height": 28, "width": 28, "color": "grayscale"}}, "'preprocessing.resize'"),
        (
            {"preprocessing": {"height": 28, "width": 28, "color": "grayscale", "resize": "digit", "x": 1}},
            "unknown key 'preprocessing.x'",
        ),
        (
            {
                "preprocessing": {
                    "height": 28,
                    "width": 28,
                    "color": "grayscale",
                    "resize": "digit",
                    "input_range": [1, 1],
                }
            },
            "input_range must map black and white to different values",
        ),
    ],
)
def test_metadata_refusals(changes: dict[str, Any], reason: str) -> None:
    assert reason in refusal(document(**changes))


def test_preprocessing_must_match_an_image_input() -> None:
    flat = [{"name": "image", "datatype": "FP32", "shape": [-1, 784]}]
    message = refusal(document(inputs=flat))
    assert "disagrees with input 'image' [-1,784]: it needs [-1,28,28,1]" in message


def test_every_problem_is_reported_at_once() -> None:
    message = refusal(document(sha256="abc", version="1"))
    assert "'sha256' must be 64 hex digits" in message and "'version' must be of type int" in message


def test_read_metadata_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "metadata.json"
    path.write_text("{")
    with pytest.raises(MetadataError, match=rf"^{path}: invalid JSON"):
        read_metadata(path)
    path.write_text("[]")
    with pytest.raises(MetadataError, match=rf"^{path}: expected a JSON object"):
        read_metadata(path)
    with pytest.raises(OSError):
        read_metadata(tmp_path / "absent.json")


def test_the_model_factory_writes_through_the_contract(tmp_path: Path) -> None:
    written = write_model_version(tmp_path, "rgb", 2, input_shape=(32, 32, 3), resize="center_crop")
    metadata, raw = read_metadata(written.path / "metadata.json")
    assert raw == written.metadata
    assert isinstance(metadata, Metadata)
    assert (metadata.preprocessing.color, metadata.preprocessing.resize) == ("rgb", "center_crop")

"""service.core.runtime on tiny real ONNX models and the real onnxruntime."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.core.providers import CPU
from service.core.runtime import _CHUNK_BYTES, ModelLoadError, ModelMetadata, load_model
from tests.helpers.modelfactory import DROP, write_model_version


def _images(n: int, shape: tuple[int, ...] = (28, 28, 1), seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, *shape)).astype(np.float32)


# ---- loading and running ----------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [13, 17, 21])
def test_load_and_run_matches_numpy(tmp_path: Path, opset: int) -> None:
    labels = [f"digit {i}" for i in range(10)]
    written = write_model_version(tmp_path, "mnist-tiny", 3, opset=opset, labels=labels)
    model = load_model(written.path, providers=[CPU])
    assert (model.name, model.version, model.path) == ("mnist-tiny", 3, written.path)
    assert model.provider == "CPUExecutionProvider"
    assert model.labels == tuple(labels)
    assert [t.name for t in model.signature.inputs] == ["image"]
    assert model.signature.outputs[0].shape == (-1, 10)
    assert model.metadata.raw["opset"] == opset
    for rows in (1, 7):
        images = _images(rows)
        outputs = model.run({"image": images})
        assert list(outputs) == ["probabilities"]
        probabilities = outputs["probabilities"]
        assert probabilities.shape == (rows, 10) and probabilities.dtype == np.float32
        np.testing.assert_allclose(probabilities, written.reference(images), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    model.close()


def test_training_artifacts_in_the_version_directory_are_ignored(tmp_path: Path) -> None:
    # Publishing keeps the Keras model as train/model.keras for retraining; the service never reads it,
    # and the sha256 in the metadata covers model.onnx alone.
    written = write_model_version(tmp_path, "tiny", 1)
    (written.path / "train").mkdir()
    (written.path / "train" / "model.keras").write_bytes(b"PK\x03\x04 not for the service")
    model = load_model(written.path, providers=[CPU])
    assert model.metadata.sha256 == hashlib.sha256((written.path / "model.onnx").read_bytes()).hexdigest()
    images = _images(3)
    np.testing.assert_allclose(
        model.run({"image": images})["probabilities"], written.reference(images), rtol=1e-4, atol=1e-6
    )
    model.close()


def test_model_larger_than_one_read_chunk(tmp_path: Path) -> None:
    written = write_model_version(tmp_path, input_shape=(64, 64, 3), classes=64)
    assert (written.path / "model.onnx").stat().st_size > 2 * _CHUNK_BYTES
    model = load_model(written.path, providers=[CPU])
    images = _images(2, (64, 64, 3))
    probabilities = model.run({"image": images})["probabilities"]
    np.testing.assert_allclose(probabilities, written.reference(images), rtol=1e-4, atol=1e-6)


def test_session_options(tmp_path: Path) -> None:
    written = write_model_version(tmp_path)
    model = load_model(written.path, providers=[CPU], intra_op_threads=1, inter_op_threads=2)
    assert model._session is not None
    options = model._session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 2)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.log_severity_level == 3


def test_concurrent_runs_agree_with_serial_ones(tmp_path: Path) -> None:
    model = load_model(write_model_version(tmp_path).path, providers=[CPU])
    batches = [_images(4, seed=seed) for seed in range(16)]
    serial = [model.run({"image": b})["probabilities"] for b in batches]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda b: model.run({"image": b})["probabilities"], batches))
    for one, other in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(one, other)


def test_runtime_errors_propagate(tmp_path: Path) -> None:
    written = write_model_version(tmp_path, variant="batch_one_only")
    model = load_model(written.path, providers=[CPU])
    images = _images(1)
    np.testing.assert_allclose(
        model.run({"image": images})["probabilities"], written.reference(images), rtol=1e-4
    )
    with pytest.raises(Exception, match="Reshape"):
        model.run({"image": _images(2)})


def test_warm_up_runs_every_batch_size(tmp_path: Path) -> None:
    model = load_model(write_model_version(tmp_path).path, providers=[CPU])
    model.warm_up([1, 8, 32])
    fragile = load_model(
        write_model_version(tmp_path, "fragile", variant="batch_one_only").path, providers=[CPU]
    )
    fragile.warm_up([1])
    with pytest.raises(ModelLoadError, match=r"fragile/1: warm-up failed: .*Reshape"):
        fragile.warm_up([1, 2])
    with pytest.raises(ValueError, match="batch size"):
        model.warm_up([0])


def test_closed_model_refuses_to_run(tmp_path: Path) -> None:
    model = load_model(write_model_version(tmp_path).path, providers=[CPU])
    model.close()
    with pytest.raises(RuntimeError, match="closed"):
        model.run({"image": _images(1)})


def test_metadata_from_file(tmp_path: Path) -> None:
    written = write_model_version(tmp_path, "m", 2, classes=3, labels=["cat", "dog", "eel"])
    metadata = ModelMetadata.from_file(written.path / "metadata.json")
    assert (metadata.name, metadata.version, metadata.labels) == ("m", 2, ("cat", "dog", "eel"))
    assert metadata.sha256 == written.metadata["sha256"]
    assert metadata.signature.input("image") is not None
    assert metadata.raw == written.metadata


# ---- refusals ---------------------------------------------------------------------------------------


def _refusal(version_path: Path) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_model(version_path, providers=[CPU])
    message = str(info.value)
    assert message.startswith(str(version_path)), message
    return message


@pytest.mark.parametrize("missing", ["model.onnx", "metadata.json"])
def test_missing_file(tmp_path: Path, missing: str) -> None:
    written = write_model_version(tmp_path)
    (written.path / missing).unlink()
    assert f"{missing} is missing" in _refusal(written.path)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"name": "tiny", ', "invalid JSON"),
        (b"\xff\xfe".decode("latin-1"), "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_unparseable_metadata(tmp_path: Path, text: str, reason: str) -> None:
    written = write_model_version(tmp_path)
    (written.path / "metadata.json").write_text(text, encoding="latin-1")
    assert reason in _refusal(written.path)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"sha256": DROP}, "missing key 'sha256'"),
        ({"labels": DROP}, "missing key 'labels'"),
        ({"version": "1"}, "'version' must be of type int, got str"),
        ({"version": True}, "'version' must be of type int, got bool"),
        ({"platform": "tensorflow_savedmodel"}, "'platform' must be 'onnxruntime_onnx'"),
        ({"inputs": []}, "'inputs' must not be empty"),
        ({"inputs": [{"name": "image", "datatype": "FP33", "shape": [-1, 28, 28, 1]}]}, "datatype 'FP33'"),
        ({"outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 0]}]}, "shape must be"),
        ({"labels": ["a", "b"]}, "2 labels for 10 classes"),
        ({"labels": [1, 2]}, "'labels' must be a list of strings"),
        ({"sha256": "abc"}, "'sha256' must be 64 hex digits"),
    ],
)
def test_invalid_metadata(tmp_path: Path, overrides: dict[str, object], reason: str) -> None:
    written = write_model_version(tmp_path, metadata_overrides=overrides)
    assert reason in _refusal(written.path)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"name": "other"}, "metadata.json describes other/1, not the directory's tiny/1"),
        ({"version": 2}, "metadata.json describes tiny/2, not the directory's tiny/1"),
    ],
)
def test_metadata_disagrees_with_directory(tmp_path: Path, overrides: dict[str, object], reason: str) -> None:
    assert reason in _refusal(write_model_version(tmp_path, metadata_overrides=overrides).path)


def test_sha256_mismatch(tmp_path: Path) -> None:
    written = write_model_version(tmp_path, metadata_overrides={"sha256": "ab" * 32})
    file_hash = hashlib.sha256((written.path / "model.onnx").read_bytes()).hexdigest()
    message = _refusal(written.path)
    assert f"sha256 mismatch (metadata {'ab' * 6}.., file {file_hash[:12]}..)" in message


def test_corrupt_model_bytes(tmp_path: Path) -> None:
    message = _refusal(write_model_version(tmp_path, variant="corrupt").path)
    assert "onnxruntime cannot load model.onnx" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("variant", "reason"),
    [
        ("output_name", "model output names ['probs'] differ from metadata ['probabilities']"),
        ("input_dtype", "input 'image' is UINT8 in the model, FP32 in metadata"),
        (
            "input_rank",
            "input 'image' has shape [-1, 784] in the model, [-1, 28, 28, 1] in metadata (rank 2 vs 4)",
        ),
        ("output_dims", "output 'probabilities' has shape [-1, 11] in the model, [-1, 10] in metadata"),
        ("fixed_batch", "input 'image' has shape [1, 28, 28, 1] in the model, [-1, 28, 28, 1] in metadata"),
    ],
)
def test_signature_mismatch(tmp_path: Path, variant: str, reason: str) -> None:
    written = write_model_version(tmp_path, variant=variant)  # type: ignore[arg-type]
    assert reason in _refusal(written.path)


@pytest.mark.parametrize("bad", ["01", "0", "latest"])
def test_not_a_version_directory(tmp_path: Path, bad: str) -> None:
    written = write_model_version(tmp_path)
    path = written.path.rename(written.path.parent / bad)
    assert "not a <model name>/<version> directory" in _refusal(path)


def test_providers_must_be_given(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="providers"):
        load_model(write_model_version(tmp_path).path, providers=[])


def test_preprocessing_that_disagrees_with_the_input_is_refused(tmp_path: Path) -> None:
    wrong = {"height": 32, "width": 32, "color": "rgb", "input_range": [0.0, 255.0], "resize": "stretch"}
    message = _refusal(write_model_version(tmp_path, metadata_overrides={"preprocessing": wrong}).path)
    assert "preprocessing (height 32, width 32, rgb) disagrees with input 'image' [-1,28,28,1]" in message
    missing = _refusal(
        write_model_version(tmp_path, "other", metadata_overrides={"preprocessing": DROP}).path
    )
    assert "missing key 'preprocessing'" in missing

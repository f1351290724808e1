"""service.runtime on tiny real ONNX models and the real onnxruntime."""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from service import runtime
from service.runtime import CPU, CUDA, ModelLoadError, ModelMetadata, load_model, select_providers
from tests.helpers.modelfactory import DROP, write_model_version

ROOT = Path(__file__).resolve().parents[2]


def _cuda_driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def _images(n: int, shape: tuple[int, ...] = (28, 28, 1), seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, *shape)).astype(np.float32)


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def fresh_provider_cache() -> Iterator[None]:
    runtime._usable.cache_clear()
    runtime._default_providers.cache_clear()
    yield
    runtime._usable.cache_clear()
    runtime._default_providers.cache_clear()


# ---- providers ---------------------------------------------------------------------------------------


def test_probe_model_is_the_documented_identity_model() -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    assert model.SerializeToString() == runtime._PROBE_MODEL
    session = ort.InferenceSession(runtime._PROBE_MODEL, providers=[CPU])
    assert session.run(None, {"x": np.array([2.5], np.float32)})[0].tolist() == [2.5]


def test_default_providers_are_decided_silently() -> None:
    # onnxruntime logs from C++ straight to stderr, so only a separate process can see what it printed.
    proc = _python(
        "import json; from service.runtime import select_providers; print(json.dumps(select_providers()))"
    )
    assert proc.returncode == 0, proc.stderr
    assert "CUDA" not in proc.stderr and "rror" not in proc.stderr, proc.stderr
    providers = json.loads(proc.stdout)
    if _cuda_driver_present():
        assert providers in ([CUDA, CPU], [CPU])
    else:
        assert providers == [CPU]


def test_cuda_probe_is_silent_even_when_it_fails() -> None:
    # Skips the driver check and asks onnxruntime directly: without a GPU (or without the CUDA libraries)
    # this is exactly the session that would print a red error with default logging.
    proc = _python("from service import runtime; print(runtime._session_starts(runtime.CUDA))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    if not _cuda_driver_present():
        assert proc.stdout.strip() == "False"


def test_default_is_cpu_only_without_a_cuda_device(
    monkeypatch: pytest.MonkeyPatch, fresh_provider_cache: None
) -> None:
    monkeypatch.setattr(runtime, "_cuda_device_count", lambda: 0)
    assert select_providers() == [CPU]


def test_default_puts_cuda_first_when_it_starts(
    monkeypatch: pytest.MonkeyPatch, fresh_provider_cache: None
) -> None:
    monkeypatch.setattr(runtime, "_cuda_device_count", lambda: 1)
    monkeypatch.setattr(runtime, "_session_starts", lambda provider: provider == CUDA)
    assert select_providers() == [CUDA, CPU]


def test_default_is_decided_once(monkeypatch: pytest.MonkeyPatch, fresh_provider_cache: None) -> None:
    calls = []

    def no_device() -> int:
        calls.append(1)
        return 0

    monkeypatch.setattr(runtime, "_cuda_device_count", no_device)
    assert select_providers() == select_providers() == [CPU]
    assert len(calls) == 1


def test_explicit_cpu_request_is_honoured() -> None:
    assert select_providers(["CPUExecutionProvider"]) == [CPU]


def test_explicit_cuda_request_drops_cuda_that_cannot_start(
    monkeypatch: pytest.MonkeyPatch, fresh_provider_cache: None, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runtime, "_cuda_device_count", lambda: 0)
    with caplog.at_level(logging.WARNING, logger="service.runtime"):
        assert select_providers([CUDA, CPU, CPU]) == [CPU]
    assert "CUDAExecutionProvider" in caplog.text
    with pytest.raises(ValueError, match="none of the requested"):
        select_providers([CUDA])


def test_unknown_provider_is_refused_with_the_available_list() -> None:
    with pytest.raises(
        ValueError, match=r"unknown execution provider.*NoSuchExecutionProvider.*available"
    ) as info:
        select_providers(["NoSuchExecutionProvider", CPU])
    assert CPU in str(info.value)
    with pytest.raises(ValueError):
        select_providers([])


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


def test_model_larger_than_one_read_chunk(tmp_path: Path) -> None:
    written = write_model_version(tmp_path, input_shape=(64, 64, 3), classes=64)
    assert (written.path / "model.onnx").stat().st_size > 2 * runtime._CHUNK_BYTES
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
    with pytest.raises(Exception, match="Reshape"):
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

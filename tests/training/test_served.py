"""End to end: a model trained on an image folder by the command line as a user runs it, and a foreign ONNX
model imported next to it, served by the real service process and asked by tritonclient and ``/classify``.
The served answers must equal onnxruntime's on the published files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from PIL import Image

from tests.helpers.server import running_service
from training.cli import main

from .conftest import CIFAR5, Folders, Foreign

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]


def onnx_run(path: Path, name: str, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {name: images.astype(np.float32)})[0])


def test_folder_trained_and_imported_models_are_served(
    folders: Folders, foreign: Foreign, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repository = tmp_path / "models"
    train = ["train", "--images", str(folders.cifar), "--preset", "cnn", "--name", "photos"]
    train += ["--publish", str(repository), "--epochs", "1", "--batch-size", "32"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "training", *train],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "5 classes, 300 images (flat layout)" in result.stderr
    assert "images become 32x32 (HxW) rgb (stretch)" in result.stderr
    trained = json.loads((repository / "photos" / "1" / "metadata.json").read_text())
    assert trained["labels"] == list(CIFAR5)
    assert trained["preprocessing"]["input_range"] == [0.0, 255.0]
    assert trained["data"]["test"]["source"] == "carved"
    assert trained["training"]["command"] == "python -m training " + " ".join(train)

    imported = ["import", str(foreign.onnx), "--name", "foreign", "--labels", ",".join(CIFAR5)]
    imported += ["--input-scale", "0..1", "--resize", "stretch", "--publish", str(repository)]
    assert main(imported) == 0
    assert "pixels [-1, 32, 32, 3] FP32" in capsys.readouterr().out

    files = sorted(folders.cifar.glob("*/*.jpg"))[::37][:8]
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]).astype(np.float32)
    with running_service(tmp_path, env={"SERVE_MODEL_REPOSITORY": str(repository)}) as service:
        client = triton.InferenceServerClient(service.address)
        assert client.get_model_metadata("foreign")["inputs"][0]["name"] == "pixels"

        # The imported model takes 0..1 (its preprocessing entry says so); tritonclient sends what it wants.
        request = triton.InferInput("pixels", list(pixels.shape), "FP32")
        request.set_data_from_numpy(pixels / 255.0, binary_data=True)
        answer = client.infer("foreign", [request], outputs=[triton.InferRequestedOutput("scores")])
        expected = onnx_run(repository / "foreign" / "1" / "model.onnx", "pixels", pixels / 255.0)
        assert np.allclose(answer.as_numpy("scores"), expected, atol=1e-6)

        request = triton.InferInput("image", list(pixels.shape), "FP32")
        request.set_data_from_numpy(pixels, binary_data=False)
        answer = client.infer("photos", [request])
        expected = onnx_run(repository / "photos" / "1" / "model.onnx", "image", pixels)
        assert np.allclose(answer.as_numpy("probabilities"), expected, atol=1e-6)

        # /classify on the folder-trained model: the file's own pixels (already the model's size) in.
        for file, probabilities in zip(files, expected, strict=True):
            response = httpx.post(
                f"{service.url}/v2/models/photos/classify?top_k=5", content=file.read_bytes(), timeout=30
            )
            assert response.status_code == 200, response.text
            predictions = response.json()["predictions"]
            order = np.argsort(-probabilities, kind="stable")
            assert [p["label"] for p in predictions] == [CIFAR5[i] for i in order]
            assert np.allclose([p["probability"] for p in predictions], probabilities[order], atol=1e-6)


def test_an_imported_0_to_1_model_classifies_uploads_in_its_input_range(
    folders: Folders, foreign: Foreign, tmp_path: Path
) -> None:
    """/classify maps an upload's pixels to the model's declared input_range (here 0..1, input 'pixels')."""
    repository = tmp_path / "models"
    imported = ["import", str(foreign.onnx), "--name", "foreign", "--labels", ",".join(CIFAR5)]
    imported += ["--input-scale", "0..1", "--resize", "stretch", "--publish", str(repository)]
    assert main(imported) == 0
    jpeg = sorted(folders.cifar.glob("*/*.jpg"))[5]
    # A PNG larger than the model's input, so that the stretch resize is part of what is checked.
    large = tmp_path / "large.png"
    Image.open(jpeg).convert("RGB").resize((56, 48), Image.Resampling.BICUBIC).save(large)
    pixels = np.stack(
        [
            np.asarray(Image.open(jpeg).convert("RGB")),
            np.asarray(Image.open(large).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)),
        ]
    ).astype(np.float32)
    expected = onnx_run(repository / "foreign" / "1" / "model.onnx", "pixels", pixels / 255.0)
    with running_service(tmp_path, env={"SERVE_MODEL_REPOSITORY": str(repository)}) as service:
        files = [
            ("file", ("cifar.jpg", jpeg.read_bytes(), "image/jpeg")),
            ("file", ("large.png", large.read_bytes(), "image/png")),
        ]
        response = httpx.post(
            f"{service.url}/v2/models/foreign/classify?top_k=5&return_input=true", files=files, timeout=30
        )
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["filename"] for r in results] == ["cifar.jpg", "large.png"]
        for result, image, probabilities in zip(results, pixels, expected, strict=True):
            assert np.allclose(result["input"], (image / 255.0).ravel(), atol=1e-6)
            order = np.argsort(-probabilities, kind="stable")
            assert [p["label"] for p in result["predictions"]] == [CIFAR5[i] for i in order]
            got = [p["probability"] for p in result["predictions"]]
            assert np.allclose(got, probabilities[order], atol=1e-5)
        # The same file, raw, answered at the top level too.
        raw = httpx.post(f"{service.url}/v2/models/foreign/classify", content=jpeg.read_bytes(), timeout=30)
        assert raw.status_code == 200, raw.text
        assert raw.json()["predictions"] == results[0]["predictions"][:3]

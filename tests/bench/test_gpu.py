"""bench.gpu on a machine without a GPU: its arguments, and that a CPU fallback is caught, never measured."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import gpu
from tests.helpers.data import MODELS

ROOT = Path(__file__).resolve().parents[2]
MODEL = MODELS / "mnist-cnn" / "1" / "model.onnx"


def run_gpu(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.gpu", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},  # no GPU, even where there is one
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batches", "0,8"], "batch sizes must be from 1 to 4096"),
        (["--batches", "8,x"], "batch sizes must be integers"),
        (["--rows", "0"], "must be at least 1"),
    ],
)
def test_bad_arguments_exit_2(args: list[str], message: str) -> None:
    result = run_gpu(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_unknown_model_exits_2() -> None:
    result = run_gpu("--model", "no-such-model")
    assert result.returncode == 2
    assert "no versions of model 'no-such-model'" in result.stderr


def test_without_cuda_it_exits_3_before_measuring_anything() -> None:
    result = run_gpu("--seconds", "1")
    assert result.returncode == gpu.NO_CUDA, result.stdout + result.stderr
    assert "CUDA NOT IN USE" in result.stderr
    assert "the session runs on ['CPUExecutionProvider']" in result.stderr
    assert "samples/s" not in result.stdout  # nothing was measured on the CPU and passed off as CUDA


def test_a_session_on_the_cpu_is_refused() -> None:
    # What onnxruntime hands back when CUDA cannot load: a session on the CPU provider only.
    with pytest.raises(gpu.CudaNotUsed, match=r"the session runs on \['CPUExecutionProvider'\]"):
        gpu.cuda_session(MODEL, [gpu.CPU])


def test_placement_of_a_real_cpu_profile_is_refused() -> None:
    image = gpu.synthetic_image(MODEL.parent / "metadata.json")
    assert image.shape == (1, 28, 28, 1) and image.dtype == np.float32
    by_op = gpu.profiled_placement(MODEL, image, [gpu.CPU])
    assert by_op["Conv"] and set(by_op["Conv"]) == {gpu.CPU}
    with pytest.raises(gpu.CudaNotUsed, match="compute operators ran outside CUDAExecutionProvider"):
        gpu.check_placement(by_op)


def test_placement_all_on_cuda_passes_and_none_at_all_is_refused() -> None:
    events = [
        {"cat": "Node", "args": {"op_name": "Conv", "provider": gpu.CUDA}},
        {"cat": "Node", "args": {"op_name": "Gemm", "provider": gpu.CUDA}},
        {"cat": "Node", "args": {"op_name": "Reshape", "provider": gpu.CPU}},  # shape work may stay
        {"cat": "Session", "args": {}},
    ]
    by_op = gpu.placement(json.loads(json.dumps(events)))
    assert by_op["Reshape"] == collections.Counter({gpu.CPU: 1})
    gpu.check_placement(by_op)
    with pytest.raises(gpu.CudaNotUsed, match="no compute operator"):
        gpu.check_placement(gpu.placement(events[2:]))

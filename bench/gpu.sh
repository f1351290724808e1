#!/usr/bin/env bash
# The GPU check (bench/gpu.py): the service on CUDA against raw onnxruntime CUDA at its best batch size.
#
#   bash bench/gpu.sh [bench.gpu options]      e.g. bash bench/gpu.sh --rows 32 --seconds 5
#
# Needs an NVIDIA driver (nvidia-smi) and a Python environment with the project and onnxruntime-gpu's
# CUDA and cuDNN wheels: PYTHON names one (default: .venv/bin/python); without one, or without the CUDA
# wheels, this creates or completes it with pip (network needed once). Runs in under 5 minutes; exits 3,
# loudly, when onnxruntime would run on the CPU instead of CUDA (see bench/gpu.py), 4 without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L; then
    echo "error: no NVIDIA GPU visible (nvidia-smi missing or failing)" >&2
    exit 4
fi
if [ ! -x "$PYTHON" ]; then
    python3 -m venv .venv
    PYTHON=.venv/bin/python
    "$PYTHON" -m pip install -q --upgrade pip
    "$PYTHON" -m pip install -q -e .
fi
# onnxruntime-gpu loads CUDA and cuDNN from the nvidia-* wheels of its [cuda,cudnn] extras.
if ! "$PYTHON" -c "import nvidia.cublas, nvidia.cudnn" 2>/dev/null; then
    version="$("$PYTHON" -c "import onnxruntime; print(onnxruntime.__version__)")"
    "$PYTHON" -m pip install -q "onnxruntime-gpu[cuda,cudnn]==${version}"
fi
DATA_DIR="${DATA_DIR:-$PWD/../shared/data}" exec timeout 280 "$PYTHON" -m bench.gpu "$@"

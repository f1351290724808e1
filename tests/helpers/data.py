"""Real test images for the service tests, read straight from the offline data sets."""

from __future__ import annotations

import gzip
import os
from functools import cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("DATA_DIR", ROOT.parent / "shared" / "data")).resolve()
MODELS = ROOT / "models"


def _idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@cache
def load_digits(dataset: str = "mnist") -> tuple[np.ndarray, np.ndarray]:
    """(images [N,28,28,1] float32 0..255, labels [N]) of a 28x28 test set: 'mnist' or 'fashion-mnist'."""
    images = _idx(DATA_DIR / dataset / "t10k-images-idx3-ubyte.gz")
    labels = _idx(DATA_DIR / dataset / "t10k-labels-idx1-ubyte.gz")
    return images[..., None].astype(np.float32), labels.astype(np.int64)


@cache
def load_cifar() -> tuple[np.ndarray, np.ndarray]:
    """(images [1000,32,32,3] float32 0..255, labels [1000]) of the CIFAR-10 test subset."""
    with np.load(DATA_DIR / "cifar10" / "cifar10_subset_lossless.npz") as data:
        return data["x_test"].astype(np.float32), data["y_test"].reshape(-1).astype(np.int64)

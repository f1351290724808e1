"""Small image files and class folders written for the image-folder tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def image(path: Path, size: tuple[int, int] = (8, 8), mode: str = "L", seed: int = 0) -> Path:
    """A seeded noise image of ``size`` (width, height), grayscale (``L``) or ``RGB``, saved by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = 1 if mode == "L" else 3
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(path)
    return path


def classes(root: Path, counts: dict[str, int], suffix: str = ".png") -> Path:
    """``root/<class>/<i><suffix>`` for each class and count; returns ``root``."""
    for name, count in counts.items():
        for i in range(count):
            image(root / name / f"{i}{suffix}", seed=i)
    return root

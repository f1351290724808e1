"""An attribution drawn over the image it explains: the ``?format=png`` answer of ``POST .../explain``.

The model input is shown in grey (colour models: in colour, dimmed), as the model saw it: the
``input_range`` of the model's preprocessing maps back to 0..255. Positive attribution (the pixel
supports the class) is laid over it in red, negative (it speaks against the class) in blue, each
pixel's opacity its ``|attribution|`` over the largest ``|attribution|`` of the map, so the strongest
pixel is opaque and a map of zeros leaves the image as it is. Pixels are enlarged to squares (nearest
neighbour) until the picture is at least :data:`MIN_SIDE` pixels a side, so a 28x28 input stays readable.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from service.contract import Preprocessing

#: The shorter side of the picture is enlarged by whole pixels to at least this many pixels.
MIN_SIDE = 224
_RED = np.array([230.0, 30.0, 30.0])
_BLUE = np.array([30.0, 90.0, 230.0])


def overlay(image: np.ndarray, attribution: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """``(H, W, 3)`` uint8: ``image`` (the model input, ``(H, W, C)``) under ``attribution`` ``(H, W)``."""
    black, white = preprocessing.input_range
    grey = np.clip((image.astype(np.float64) - black) / (white - black) * 255.0, 0, 255)
    base = np.repeat(grey, 3, axis=2) if grey.shape[2] == 1 else grey[..., :3] * 0.8
    peak = float(np.abs(attribution).max())
    if peak <= 0 or not math.isfinite(peak):
        return base.round().astype(np.uint8)
    alpha = (np.abs(attribution) / peak)[..., None]
    colour = np.where((attribution >= 0)[..., None], _RED, _BLUE)
    return (base * (1 - alpha) + colour * alpha).round().astype(np.uint8)


def overlay_png(image: np.ndarray, attribution: np.ndarray, preprocessing: Preprocessing) -> bytes:
    """:func:`overlay`, enlarged (see the module docstring) and encoded as PNG."""
    picture = overlay(image, attribution, preprocessing)
    scale = max(1, math.ceil(MIN_SIDE / min(picture.shape[:2])))
    picture = np.repeat(np.repeat(picture, scale, axis=0), scale, axis=1)
    out = io.BytesIO()
    Image.fromarray(picture, "RGB").save(out, format="PNG")
    return out.getvalue()

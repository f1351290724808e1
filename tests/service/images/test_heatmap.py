"""The heat map over the explained image."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from service.contract import Preprocessing
from service.images.heatmap import overlay, overlay_png

GREY = Preprocessing(height=4, width=4, color="grayscale", resize="stretch", input_range=(0.0, 1.0))


def test_red_supports_blue_opposes_and_zero_leaves_the_image() -> None:
    image = np.full((4, 4, 1), 0.5, np.float32)
    attribution = np.zeros((4, 4))
    attribution[0, 0], attribution[0, 1], attribution[0, 2] = 2.0, -2.0, 1.0
    picture = overlay(image, attribution, GREY).astype(int)
    assert picture[0, 0].tolist() == [230, 30, 30]  # the strongest is opaque
    assert picture[0, 1].tolist() == [30, 90, 230]
    assert picture[0, 2].tolist() == [179, 79, 79]  # half way between grey 128 and red
    assert (picture[1:] == 128).all()
    assert (overlay(image, np.zeros((4, 4)), GREY) == 128).all()


def test_the_png_is_enlarged_to_a_readable_size() -> None:
    data = overlay_png(np.zeros((4, 4, 1), np.float32), np.eye(4), GREY)
    picture = Image.open(io.BytesIO(data))
    assert (picture.format, picture.size, picture.mode) == ("PNG", (224, 224), "RGB")

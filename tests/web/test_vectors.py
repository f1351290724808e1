"""One algorithm, two implementations: ``service/static/preprocess.js`` in Chromium against the Python
``service.images.digit.digit`` on the same drawings and photos, within one grey level.

The shared vectors (``tests/web/vectors/``, written by ``python -m tests.web.make_vectors``) pin both to
the recorded outputs; freshly generated photos of every kind check them against each other.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from playwright.sync_api import Page

from service.errors import InvalidInput
from service.images.digit import digit
from tests.helpers.data import load_digits
from tests.helpers.photos import KINDS, render
from tests.web.conftest import Visit

pytestmark = pytest.mark.slow

VECTORS = Path(__file__).resolve().parent / "vectors"
GREY_LEVEL = 1.0

PREPROCESS = """
async ({ encoded, width, height }) => {
  const { preprocessDigit } = await import("/static/preprocess.js");
  const rgba = Uint8ClampedArray.from(atob(encoded), (c) => c.charCodeAt(0));
  const input = preprocessDigit(rgba, width, height);
  return input === null ? null : Array.from(input);
}
"""


def in_browser(page: Page, pixels: np.ndarray) -> np.ndarray | None:
    """``preprocessDigit`` of RGBA ``pixels`` (h, w, 4) uint8, as a 28x28 array, or None."""
    height, width = pixels.shape[:2]
    encoded = base64.b64encode(np.ascontiguousarray(pixels).tobytes()).decode()
    answer = page.evaluate(PREPROCESS, {"encoded": encoded, "width": width, "height": height})
    return None if answer is None else np.asarray(answer, np.float64).reshape(28, 28)


def in_python(pixels: np.ndarray) -> np.ndarray | None:
    try:
        return digit(pixels)
    except InvalidInput:
        return None


def test_javascript_reproduces_the_shared_vectors(visit: Visit) -> None:
    visit.open()
    manifest = json.loads((VECTORS / "vectors.json").read_text())
    blanks = 0
    for name, entry in manifest.items():
        pixels = np.asarray(Image.open(VECTORS / f"{name}.png").convert("RGBA"))
        js, python = in_browser(visit.page, pixels), in_python(pixels)
        if entry["expected"] is None:
            assert js is None and python is None, name
            blanks += 1
            continue
        assert js is not None and python is not None, name
        expected = np.asarray(Image.open(VECTORS / entry["expected"]), np.float64)
        assert np.abs(js - expected).max() <= GREY_LEVEL, name
        assert np.abs(js - python).max() <= GREY_LEVEL, name
        assert expected.max() >= 200, name  # a real digit, not an all-black output
    assert blanks == 2 and len(manifest) - blanks >= 15
    assert visit.errors() == []


def test_javascript_agrees_with_python_on_fresh_photos(visit: Visit) -> None:
    visit.open()
    images, _ = load_digits("mnist")
    rng = np.random.default_rng(11)
    compared = 0
    for kind, style in KINDS.items():
        if style.frame[0] * style.frame[1] > 1_000_000:
            continue  # the large frame is in the vectors at a size that keeps the test fast
        for index in rng.choice(len(images), size=2, replace=False):
            data, _ = render(images[index, ..., 0], style, rng)
            pixels = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGBA"))
            js, python = in_browser(visit.page, pixels), in_python(pixels)
            assert js is not None and python is not None, kind
            assert np.abs(js - python).max() <= GREY_LEVEL, kind
            compared += 1
    assert compared >= 2 * (len(KINDS) - 1)
    assert visit.errors() == []

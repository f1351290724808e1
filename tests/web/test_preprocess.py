"""``service/static/preprocess.js``, the canvas-to-MNIST preprocessing, run as it is in Chromium.

The module itself is imported into the page (no Python re-implementation): real MNIST test digits are
drawn big, anywhere on a canvas-sized image, in the colour schemes a canvas can have; the module's
output is sent to the service, and ``mnist-cnn`` must still recognise them.
"""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page

from tests.helpers.data import load_digits
from tests.helpers.server import RunningService
from tests.web.conftest import Visit

pytestmark = pytest.mark.slow

CANVAS = 280  # the page's drawing canvas, in pixels
STYLES = ("white-on-black", "black-on-white", "white-on-transparent")

PREPROCESS = """
async ({ images, width, height }) => {
  const { preprocessDigit } = await import("/static/preprocess.js");
  return images.map((encoded) => {
    const rgba = Uint8ClampedArray.from(atob(encoded), (c) => c.charCodeAt(0));
    const input = preprocessDigit(rgba, width, height);
    return input === null ? null : Array.from(input);
  });
}
"""


def preprocess(page: Page, images: np.ndarray) -> list[np.ndarray | None]:
    """``preprocessDigit`` of each RGBA image ``[N, H, W, 4]`` uint8, as 28x28 arrays (or None)."""
    results: list[np.ndarray | None] = []
    height, width = images.shape[1:3]
    for start in range(0, len(images), 10):  # a few MB per call at most
        encoded = [base64.b64encode(image.tobytes()).decode() for image in images[start : start + 10]]
        answer = page.evaluate(PREPROCESS, {"images": encoded, "width": width, "height": height})
        results += [None if a is None else np.asarray(a, np.float32).reshape(28, 28) for a in answer]
    return results


def rgba(gray: np.ndarray, style: str) -> np.ndarray:
    """A grayscale drawing (ink 255 on 0) as the RGBA pixels a canvas in ``style`` would hold."""
    out = np.empty((*gray.shape, 4), np.uint8)
    if style == "white-on-black":
        out[..., :3] = gray[..., None]
        out[..., 3] = 255
    elif style == "black-on-white":
        out[..., :3] = 255 - gray[..., None]
        out[..., 3] = 255
    else:  # white strokes on a transparent canvas
        out[..., :3] = 255
        out[..., 3] = gray
    return out


def draw_big(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The 28x28 digit enlarged to 120..240 px and put anywhere on a blank canvas, as a user draws."""
    side = int(rng.integers(120, 241))
    big = Image.fromarray(digit.astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR)
    canvas = np.zeros((CANVAS, CANVAS), np.uint8)
    x, y = rng.integers(0, CANVAS - side + 1, size=2)
    canvas[y : y + side, x : x + side] = np.asarray(big)
    return canvas


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """(row, column) in pixel-index coordinates, as MNIST's own digits average (14, 14)."""
    rows, cols = np.mgrid[: image.shape[0], : image.shape[1]]
    return float((image * rows).sum() / image.sum()), float((image * cols).sum() / image.sum())


def ink_box(image: np.ndarray) -> tuple[int, int]:
    """(height, width) of the smallest box holding every non-zero pixel."""
    rows = np.flatnonzero(image.any(axis=1))
    cols = np.flatnonzero(image.any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def test_drawn_mnist_digits_stay_recognised(visit: Visit, service: RunningService) -> None:
    images, labels = load_digits("mnist")
    rng = np.random.default_rng(7)
    chosen = rng.choice(len(images), size=60, replace=False)
    drawings = np.stack([rgba(draw_big(images[i, ..., 0], rng), STYLES[n % 3]) for n, i in enumerate(chosen)])
    visit.open()
    inputs = preprocess(visit.page, drawings)
    assert all(x is not None for x in inputs)
    batch = np.stack([x for x in inputs if x is not None])[..., None]
    assert batch.shape == (60, 28, 28, 1)
    assert batch.min() >= 0 and batch.max() == 255

    request = {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(batch.shape)}]}
    request["inputs"][0]["data"] = batch.ravel().tolist()
    response = httpx.post(f"{service.url}/v2/models/mnist-cnn/infer", json=request, timeout=30)
    assert response.status_code == 200, response.text
    probabilities = np.asarray(response.json()["outputs"][0]["data"]).reshape(60, 10)
    predicted = probabilities.argmax(axis=1)
    accuracy = float((predicted == labels[chosen]).mean())
    for style in STYLES:  # no colour scheme may be the one that fails
        mask = np.arange(60) % 3 == STYLES.index(style)
        assert (predicted[mask] == labels[chosen][mask]).mean() >= 0.8, style
    assert accuracy >= 0.9
    assert visit.errors() == []


def test_mnist_digits_come_back_centred_and_boxed(visit: Visit) -> None:
    # MNIST digits are already what the recipe makes, so preprocessing them again changes little.
    images, _ = load_digits("mnist")
    originals = images[:200, ..., 0]
    visit.open()
    drawings = np.stack([rgba(d.astype(np.uint8), "white-on-black") for d in originals])
    outputs = preprocess(visit.page, drawings)
    correlations = []
    for original, output in zip(originals, outputs, strict=True):
        assert output is not None
        row, col = centre_of_mass(output)
        assert abs(row - 14) <= 0.51 and abs(col - 14) <= 0.51, (row, col)  # whole-pixel shifts
        assert max(ink_box(output)) == 20
        correlations.append(np.corrcoef(original.ravel(), output.ravel())[0, 1])
    assert min(correlations) >= 0.5  # the same digit, if shifted by a pixel
    assert np.mean(correlations) >= 0.97


def test_preprocess_contract(visit: Visit) -> None:
    visit.open()
    blank = np.zeros((CANVAS, CANVAS), np.uint8)
    bar = blank.copy()
    bar[10:130, 200:212] = 128  # a grey 12x120 stroke near a corner
    outputs = preprocess(visit.page, np.stack([rgba(image, s) for image in (blank, bar) for s in STYLES]))
    assert outputs[:3] == [None, None, None]  # nothing drawn: nothing to send
    bars = outputs[3:]
    for output in bars:
        assert output is not None
        assert ink_box(output) == (20, 2)  # the longer side is 20, the aspect ratio is kept
        assert output.max() == 255  # grey ink is stretched to MNIST's full white
        row, col = centre_of_mass(output)
        assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5
    assert bars[0] is not None and bars[1] is not None and bars[2] is not None
    np.testing.assert_allclose(bars[0], bars[1], atol=1.0)
    np.testing.assert_allclose(bars[0], bars[2], atol=1.0)

    with pytest.raises(PlaywrightError, match="expected 280x280 RGBA pixels, got 100 values"):
        visit.page.evaluate(
            """async () => {
                const { preprocessDigit } = await import("/static/preprocess.js");
                return preprocessDigit(new Uint8ClampedArray(100), 280, 280);
            }"""
        )
    assert visit.errors() == []

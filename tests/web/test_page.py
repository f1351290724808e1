"""The "try a model" page at ``/`` in a real headless Chromium, against the real service and models.

Screenshots land in ``test-artifacts/web/``.
"""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from service.contract import Preprocessing
from service.images.preprocess import prepare
from tests.helpers.data import MODELS, load_digits
from tests.helpers.photos import photos
from tests.web.conftest import MAX_IMAGE_PIXELS, Visit

pytestmark = pytest.mark.slow

CANVAS = 280  # the drawing canvas, in canvas pixels
NOTHING = "\u2013"  # the top label before anything is predicted (an en dash)
# The class names the served model declares (models/fashion-cnn/1/metadata.json).
FASHION_LABELS = json.loads((MODELS / "fashion-cnn" / "1" / "metadata.json").read_text())["labels"]
# Dropping a file: what a drag from the desktop delivers to the drop zone.
DROP = """
([name, type, encoded]) => {
  const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type }));
  const zone = document.getElementById("dropzone");
  for (const kind of ["dragenter", "dragover", "drop"]) {
    zone.dispatchEvent(new DragEvent(kind, { dataTransfer: transfer, bubbles: true, cancelable: true }));
  }
}
"""


def press(page: Page, points: list[tuple[float, float]]) -> None:
    """Put the mouse down on the first point (canvas pixels) and drag through the rest; stays down."""
    box = page.locator("#pad").bounding_box()
    assert box is not None
    scale_x, scale_y = box["width"] / CANVAS, box["height"] / CANVAS
    page.mouse.move(box["x"] + points[0][0] * scale_x, box["y"] + points[0][1] * scale_y)
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x * scale_x, box["y"] + y * scale_y, steps=2)


def one_stroke() -> list[tuple[float, float]]:
    """A "1": one slightly slanted downstroke over most of the canvas height."""
    return [(150 - 20 * t, 40 + 200 * t) for t in np.linspace(0, 1, 21)]


def zero_loop() -> list[tuple[float, float]]:
    """A "0": an upright ellipse, drawn once round from the top and a little past the start."""
    angles = np.linspace(0, 2 * math.pi * 1.05, 42)
    return [(140 + 62 * math.sin(a), 140 - 95 * math.cos(a)) for a in angles]


def png(image: np.ndarray, path: Path) -> Path:
    Image.fromarray(image.astype(np.uint8).squeeze(-1)).save(path, format="PNG")
    return path


def model_input_ink(page: Page) -> int:
    """Sum of the 28x28 "what the model sees" preview: zero when nothing was sent."""
    return int(
        page.evaluate(
            """() => {
                const c = document.getElementById("model-input");
                return c.getContext("2d").getImageData(0, 0, c.width, c.height).data
                    .reduce((sum, v, i) => (i % 4 === 3 ? sum : sum + v), 0);
            }"""
        )
    )


def test_page_loads_offline_with_models_and_no_errors(visit: Visit, artifacts: Path) -> None:
    visit.open()
    page = visit.page
    options = page.locator("#model option")
    assert options.evaluate_all("opts => opts.map(o => o.value)") == ["fashion-cnn/1", "mnist-cnn/1"]
    # The digit model is picked first, because the drawing canvas is what it is for.
    expect(page.locator("#model")).to_have_value("mnist-cnn/1")
    expect(page.locator("#model-details")).to_have_text("Input 28\u00d728\u00d71, 10 classes")
    expect(page.locator("#pad")).to_be_visible()
    expect(page.locator("#clear")).to_be_visible()
    expect(page.locator("#file")).to_be_attached()
    expect(page.locator("#bars .bar")).to_have_count(10)
    assert page.locator("#bars .bar-label").all_inner_texts() == [str(i) for i in range(10)]
    expect(page.locator("#result-model")).to_have_text("mnist-cnn")
    expect(page.locator("#top-label")).to_have_text(NOTHING)
    expect(page.locator("#error")).to_be_hidden()
    expect(page.get_by_label("Model", exact=True)).to_be_enabled()
    expect(page.get_by_role("img", name=re.compile("Drawing area"))).to_be_visible()
    assert page.locator("#pad").evaluate("c => getComputedStyle(c).touchAction") == "none"
    page.screenshot(path=artifacts / "loaded.png", full_page=True)
    assert visit.requests, "the page made no requests"
    outside = [url for url in visit.requests if not url.startswith(visit.service.url + "/")]
    assert outside == []  # nothing from a CDN or anywhere else: works offline
    assert visit.errors() == []


def test_drawing_a_one_and_a_zero(visit: Visit, artifacts: Path) -> None:
    visit.open()
    page = visit.page
    press(page, one_stroke())
    # Predictions are sent while the pen is still down, not only on release.
    expect(page.locator("#top-label")).not_to_have_text(NOTHING)
    page.mouse.up()
    visit.settle()
    expect(page.locator("#top-label")).to_have_text("1")
    expect(page.locator("#bars .bar.best")).to_have_attribute("data-label", "1")
    expect(page.locator("#result-model")).to_have_text("mnist-cnn")
    expect(page.locator("#result-version")).to_have_text("1")
    expect(page.locator("#result-source")).to_have_text("drawing")
    expect(page.locator("#latency")).to_have_text(re.compile(r"^\d+\.\d ms$"))
    expect(page.locator("#top-probability")).to_have_text(re.compile(r"^\d+(\.\d)? % sure$"))
    assert model_input_ink(page) > 0
    page.screenshot(path=artifacts / "drawn-1.png", full_page=True)

    page.get_by_role("button", name="Clear").click()
    visit.settle()
    expect(page.locator("#top-label")).to_have_text(NOTHING)
    assert model_input_ink(page) == 0

    press(page, zero_loop())
    page.mouse.up()
    visit.settle()
    expect(page.locator("#top-label")).to_have_text("0")
    expect(page.locator("#bars .bar.best")).to_have_attribute("data-label", "0")
    page.screenshot(path=artifacts / "drawn-0.png", full_page=True)
    assert visit.errors() == []


def test_uploading_fashion_images(visit: Visit, artifacts: Path, tmp_path: Path) -> None:
    images, labels = load_digits("fashion-mnist")
    visit.open()
    page = visit.page
    page.select_option("#model", "fashion-cnn/1")
    visit.settle()
    expect(page.locator("#result-model")).to_have_text("fashion-cnn")
    assert page.locator("#bars .bar-label").all_inner_texts() == FASHION_LABELS

    # Test image 0 (an ankle boot) through the file picker.
    path = png(images[0], tmp_path / "fashion-0.png")
    page.set_input_files("#file", path)
    visit.settle()
    expect(page.locator("#top-label")).to_have_text(FASHION_LABELS[labels[0]])
    expect(page.locator("#result-model")).to_have_text("fashion-cnn")
    expect(page.locator("#result-source")).to_have_text("fashion-0.png")
    expect(page.locator("#latency")).to_have_text(re.compile(r"^\d+\.\d ms$"))
    expect(page.get_by_role("img", name="Uploaded image fashion-0.png")).to_be_visible()
    page.screenshot(path=artifacts / "uploaded-fashion.png", full_page=True)

    # Test image 1 (a pullover), dropped on the drop zone.
    encoded = base64.b64encode(png(images[1], tmp_path / "fashion-1.png").read_bytes()).decode()
    page.evaluate(DROP, ["fashion-1.png", "image/png", encoded])
    visit.settle()
    expect(page.locator("#top-label")).to_have_text(FASHION_LABELS[labels[1]])
    expect(page.locator("#result-source")).to_have_text("fashion-1.png")
    assert labels[0] != labels[1]
    assert visit.errors() == []


def test_bad_uploads_show_the_service_error(visit: Visit, artifacts: Path, tmp_path: Path) -> None:
    visit.open()
    page = visit.page
    alert = page.get_by_role("alert")

    gif = tmp_path / "digit.gif"
    Image.new("L", (28, 28)).save(gif, format="GIF")
    page.set_input_files("#file", gif)
    visit.settle()
    expect(alert).to_be_visible()
    expect(alert).to_have_text("Bad image: unsupported image type; send PNG or JPEG")
    expect(page.locator("#top-label")).to_have_text(NOTHING)
    page.screenshot(path=artifacts / "bad-upload.png", full_page=True)

    huge = tmp_path / "huge.png"
    Image.new("L", (1250, 1000)).save(huge, format="PNG")
    page.set_input_files("#file", huge)
    visit.settle()
    expect(alert).to_have_text(
        f"Image too large: image is 1250x1000 = 1250000 pixels; the limit is {MAX_IMAGE_PIXELS}"
    )

    # A good image afterwards clears the alert.
    images, labels = load_digits("mnist")
    page.set_input_files("#file", png(images[0], tmp_path / "seven.png"))
    visit.settle()
    expect(alert).to_be_hidden()
    expect(page.locator("#top-label")).to_have_text(str(labels[0]))

    # The browser reports each refused request; nothing else went wrong.
    errors = visit.errors()
    assert len(errors) == 2, errors
    assert "status of 415" in errors[0] and "status of 413" in errors[1], errors


def test_an_unavailable_model_is_explained(visit: Visit) -> None:
    # A real overload cannot be produced on demand, so the service's documented 503 answer (docs/api.md,
    # Errors) is played back to the page for its inference requests.
    visit.open()
    page = visit.page
    page.route(
        "**/infer",
        lambda route: route.fulfill(
            status=503, headers={"Retry-After": "2"}, json={"error": "model 'mnist-cnn' is not ready"}
        ),
    )
    press(page, one_stroke())
    page.mouse.up()
    visit.settle()
    expect(page.get_by_role("alert")).to_have_text(
        "Model not ready or overloaded — try again: model 'mnist-cnn' is not ready (retry after 2 s)"
    )
    expect(page.locator("#top-label")).to_have_text(NOTHING)
    errors = visit.errors()
    assert errors and all("status of 503" in e for e in errors), errors


def test_no_feedback_is_offered_when_the_server_has_it_off(visit: Visit) -> None:
    # The shared service runs without SERVE_FEEDBACK_DIR: the model metadata says so, and the page
    # believes it (tests/web/test_feedback.py covers a server with feedback on).
    visit.open()
    page = visit.page
    press(page, one_stroke())
    page.mouse.up()
    visit.settle()
    expect(page.locator("#top-label")).to_have_text("1")
    expect(page.locator("#feedback")).to_be_hidden()
    assert page.get_by_text("Wrong? It was:").count() == 1  # in the page, never shown
    assert visit.errors() == []


def model_input(page: Page) -> np.ndarray:
    """The "what the model sees" canvas as grey levels."""
    values = page.evaluate(
        """() => {
            const c = document.getElementById("model-input");
            const pixels = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            return [c.height, c.width, Array.from(pixels)];
        }"""
    )
    height, width, rgba = values
    return np.asarray(rgba, np.float64).reshape(height, width, 4)[..., 0]


def test_opens_on_a_digit_model_when_every_model_is_served(visit_shipped: Visit) -> None:
    visit_shipped.open()
    page = visit_shipped.page
    options = page.locator("#model option").evaluate_all("opts => opts.map(o => o.value)")
    assert options == ["cifar10-cnn/1", "fashion-cnn/1", "mnist-cnn/1", "mnist-mlp/1"]
    expect(page.locator("#model")).to_have_value("mnist-cnn/1")  # not cifar10-cnn, the first name
    expect(page.locator("#pad")).to_be_visible()
    page.select_option("#model", "cifar10-cnn/1")
    visit_shipped.settle()
    expect(page.locator("#draw-panel")).to_be_hidden()  # no canvas for a model that does not read digits
    visit_shipped.open("/?model=mnist-mlp")
    expect(page.locator("#model")).to_have_value("mnist-mlp/1")
    assert visit_shipped.errors() == []


def test_a_photo_of_a_digit_is_read_and_the_model_input_shown(
    visit: Visit, artifacts: Path, tmp_path: Path
) -> None:
    visit.open()
    page = visit.page
    digit = Preprocessing(height=28, width=28, color="grayscale", resize="digit")
    for n, (data, content_type, label) in enumerate(photos("phone", 3, seed=21)):
        path = tmp_path / f"photo-{n}.{content_type.split('/')[1]}"
        path.write_bytes(data)
        page.set_input_files("#file", path)
        visit.settle()
        expect(page.locator("#top-label")).to_have_text(str(label))
        expect(page.locator("#result-source")).to_have_text(path.name)
        # The canvas shows what the service made of the photo: its preprocessing, not the photo.
        expected = prepare(data, digit)[..., 0]
        assert np.abs(model_input(page) - expected).max() <= 1.0
        assert expected.max() > 200
    assert any("return_input=true" in url for url in visit.requests)
    page.screenshot(path=artifacts / "uploaded-photo.png", full_page=True)

    blank = tmp_path / "blank.png"
    Image.new("L", (300, 200), 215).save(blank)
    page.set_input_files("#file", blank)
    visit.settle()
    expect(page.get_by_role("alert")).to_have_text(
        "Bad image: no digit found: the image has no ink that stands out from its background"
    )
    expect(page.locator("#top-label")).to_have_text(NOTHING)
    errors = visit.errors()
    assert len(errors) == 1 and "status of 400" in errors[0], errors

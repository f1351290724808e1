"""Feedback from the page: "Wrong? It was: [one button per label]" stores the classified image.

A service of its own with feedback on (the shared one has it off, see ``test_page.py``), in a real
headless Chromium; what the page sent is checked in the feedback store on disk.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, expect

from service.feedback.log import FeedbackItem, log_path, read_log
from tests.helpers.data import load_digits
from tests.helpers.server import RunningService, running_service
from tests.web.conftest import Visit
from tests.web.test_page import one_stroke, png, press

pytestmark = pytest.mark.slow

TOKEN = "page-feedback-token-0123456789"


@pytest.fixture(scope="module")
def feedback_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("web-feedback") / "feedback"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, feedback_dir: Path) -> Iterator[RunningService]:
    env = {
        "SERVE_MODELS": "mnist-cnn,fashion-cnn",
        "SERVE_FEEDBACK_DIR": str(feedback_dir),
        "SERVE_FEEDBACK_TOKEN": TOKEN,
    }
    with running_service(tmp_path_factory.mktemp("web-feedback-serve"), env=env) as running:
        yield running


@pytest.fixture
def visit(browser: Browser, service: RunningService) -> Iterator[Visit]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    result = Visit(page, service)
    page.on("console", lambda message: result.console.append(message))
    page.on("pageerror", lambda error: result.page_errors.append(str(error)))
    try:
        yield result
    finally:
        context.close()


def status_pattern(label: str) -> re.Pattern[str]:
    return re.compile(rf"^Thanks: saved as “{re.escape(label)}” \(\w{{26}}\) for retraining\.$")


def stored(feedback_dir: Path, model: str = "mnist-cnn") -> list[FeedbackItem]:
    return list(read_log(log_path(feedback_dir, model)).items)


def test_a_drawing_is_corrected_with_the_token_asked_once(
    visit: Visit, feedback_dir: Path, artifacts: Path
) -> None:
    before = len(stored(feedback_dir))
    visit.open()
    page = visit.page
    bar = page.locator("#feedback")
    expect(bar).to_be_hidden()  # nothing predicted yet
    press(page, one_stroke())
    page.mouse.up()
    visit.settle()
    expect(page.locator("#top-label")).to_have_text("1")
    expect(bar).to_be_visible()
    expect(bar.get_by_text("Wrong? It was:")).to_be_visible()
    buttons = page.get_by_role("group", name="Wrong? It was:").get_by_role("button")
    assert buttons.all_inner_texts() == [str(d) for d in range(10)]
    status = page.locator("#feedback-status")

    buttons.get_by_text("7", exact=True).click()
    expect(status).to_have_text("Enter the feedback token first.")
    token = page.get_by_label("Feedback token")
    expect(token).to_be_focused()

    token.fill("not-the-token-at-all")
    buttons.get_by_text("7", exact=True).click()
    expect(status).to_have_text("Not saved. Request failed (403): invalid feedback token")
    assert len(stored(feedback_dir)) == before

    token.fill(TOKEN)
    buttons.get_by_text("7", exact=True).click()
    expect(status).to_have_text(status_pattern("7"))
    expect(token).to_be_hidden()  # asked once per tab
    page.screenshot(path=artifacts / "feedback-sent.png", full_page=True)
    buttons.get_by_text("4", exact=True).click()
    expect(status).to_have_text(status_pattern("4"))

    items = stored(feedback_dir)[before:]
    assert [(i.label, i.predicted, i.version) for i in items] == [("7", "1", 1), ("4", "1", 1)]
    drawing = Image.open(feedback_dir / items[0].file)
    assert drawing.format == "PNG" and drawing.size == (280, 280)  # the pad itself, as drawn
    pixels = np.asarray(drawing.convert("L"))
    assert pixels.max() == 255 and pixels[0, 0] == 0  # white ink on black
    assert visit.errors() == [
        "Failed to load resource: the server responded with a status of 403 (Forbidden)"
    ]


def test_an_upload_is_sent_back_byte_for_byte(visit: Visit, feedback_dir: Path, tmp_path: Path) -> None:
    images, labels = load_digits("mnist")
    path = png(np.rot90(images[0]), tmp_path / "rotated-seven.png")  # a 7 the model misreads
    visit.open()
    page = visit.page
    page.set_input_files("#file", path)
    visit.settle()
    wrong = page.locator("#top-label").inner_text()
    page.get_by_label("Feedback token").fill(TOKEN)
    group = page.get_by_role("group", name="Wrong? It was:")
    group.get_by_role("button", name=str(labels[0]), exact=True).click()
    expect(page.locator("#feedback-status")).to_have_text(status_pattern(str(labels[0])))
    item = stored(feedback_dir)[-1]
    assert (feedback_dir / item.file).read_bytes() == path.read_bytes()
    assert item.label == str(labels[0]) and item.predicted == wrong


def test_clearing_the_drawing_hides_the_offer(visit: Visit) -> None:
    visit.open()
    page = visit.page
    press(page, one_stroke())
    page.mouse.up()
    visit.settle()
    expect(page.locator("#feedback")).to_be_visible()
    page.get_by_role("button", name="Clear").click()
    visit.settle()
    expect(page.locator("#feedback")).to_be_hidden()

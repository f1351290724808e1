"""The heat map under the prediction on the demo page, in a real headless Chromium against the real
service: after a drawing and after an upload, for the class the model answered."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.helpers.data import load_digits
from tests.web.conftest import Visit
from tests.web.test_page import one_stroke, png, press

pytestmark = pytest.mark.slow

# Share of the heat map's pixels that are clearly red (supporting) and clearly blue (against).
COLOURS = """
() => {
  const img = document.querySelector("#explanation img");
  const canvas = document.createElement("canvas");
  [canvas.width, canvas.height] = [img.naturalWidth, img.naturalHeight];
  const context = canvas.getContext("2d");
  context.drawImage(img, 0, 0);
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let red = 0, blue = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] > data[i + 2] + 80) red += 1;
    if (data[i + 2] > data[i] + 80) blue += 1;
  }
  return { red: red / (data.length / 4), blue: blue / (data.length / 4), width: canvas.width };
}
"""


def heat_map_ready(page: Page, label: str) -> dict[str, float]:
    figure = page.locator("#explanation")
    expect(figure).to_be_visible()
    expect(figure.locator("figcaption")).to_have_text(
        f'Why "{label}": red pixels speak for it, blue against it.'
    )
    expect(figure).to_have_attribute("aria-busy", "false")
    page.wait_for_function("() => document.querySelector('#explanation img').complete")
    colours: dict[str, float] = page.evaluate(COLOURS)
    return colours


def test_a_drawing_and_an_upload_get_their_heat_maps(visit: Visit, artifacts: Path, tmp_path: Path) -> None:
    visit.open()
    page = visit.page
    expect(page.locator("#explanation")).to_be_hidden()
    press(page, one_stroke())
    page.mouse.up()
    visit.settle()
    expect(page.locator("#top-label")).to_have_text("1")
    colours = heat_map_ready(page, "1")
    assert colours["width"] == 224 and colours["red"] > 0.01
    expect(
        page.get_by_role("img", name='Heat map: the pixels that made the model answer "1"')
    ).to_be_visible()
    page.screenshot(path=artifacts / "explained-1.png", full_page=True)

    images, labels = load_digits("mnist")
    page.set_input_files("#file", png(images[0], tmp_path / "seven.png"))
    visit.settle()
    expect(page.locator("#top-label")).to_have_text(str(labels[0]))
    assert heat_map_ready(page, str(labels[0]))["red"] > 0.01

    page.get_by_role("button", name="Clear").click()
    expect(page.locator("#explanation")).to_be_hidden()
    assert visit.errors() == []

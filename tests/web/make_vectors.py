"""Write the shared digit-preprocessing vectors: ``python -m tests.web.make_vectors``.

``tests/web/vectors/`` holds RGBA inputs (``<name>.png``: canvas drawings and photo-like images of real
MNIST test digits, lossless, JPEG artefacts and all baked in), the 28x28 output the Python
implementation (``service.images.digit.digit``) gives for each (``<name>.expected.png``, rounded to whole
grey levels) and ``vectors.json`` (what each input is, its label, its expected file or null for "no
digit found"). ``tests/service/images/test_preprocess.py`` checks the Python against them and
``tests/web/test_vectors.py`` checks ``service/static/preprocess.js`` against both, within one grey level.

Run it after a deliberate change to the algorithm, made in both implementations; the inputs come out
the same every time (seeded), so only the expected outputs change in the diff.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from service.errors import InvalidInput
from service.images.digit import digit
from tests.helpers.data import load_digits
from tests.helpers.photos import KINDS, render

VECTORS = Path(__file__).resolve().parent / "vectors"
CANVAS = 280
PEN = CANVAS // 10  # the page's pen: a tenth of the pad


def stroke_canvas(points: list[tuple[float, float]], closed: bool = False) -> np.ndarray:
    """Coverage 0..255 of a pen stroke through ``points`` on the 280x280 pad, anti-aliased (drawn at 4x)."""
    big = Image.new("L", (CANVAS * 4, CANVAS * 4), 0)
    draw = ImageDraw.Draw(big)
    scaled = [(4 * x, 4 * y) for x, y in points + (points[:1] if closed else [])]
    draw.line(scaled, fill=255, width=4 * PEN, joint="curve")
    for x, y in scaled[:: len(scaled) - 1 or 1]:
        draw.ellipse((x - 2 * PEN, y - 2 * PEN, x + 2 * PEN, y + 2 * PEN), fill=255)
    return np.asarray(big.reduce(4))


def canvas(coverage: np.ndarray, style: str) -> np.ndarray:
    """The RGBA pixels of a pad in ``style`` holding ``coverage``."""
    out = np.empty((*coverage.shape, 4), np.uint8)
    if style == "white-on-black":
        out[..., :3], out[..., 3] = coverage[..., None], 255
    elif style == "black-on-white":
        out[..., :3], out[..., 3] = 255 - coverage[..., None], 255
    else:  # a white pen on a transparent canvas
        out[..., :3], out[..., 3] = 255, coverage
    return out


def drawings() -> dict[str, tuple[str, int | None, np.ndarray]]:
    t = np.linspace(0, 1, 24)
    one = [(150 - 20 * s, 40 + 200 * s) for s in t]
    zero = [(140 + 62 * np.sin(a), 140 - 95 * np.cos(a)) for a in np.linspace(0, 2 * np.pi, 40)]
    seven = [(60, 50), (220, 50), (130, 240)]
    four = np.maximum(stroke_canvas([(50, 20), (25, 90), (90, 90)]), stroke_canvas([(72, 45), (72, 135)]))
    images, labels = load_digits("mnist")
    mnist = np.zeros((CANVAS, CANVAS), np.uint8)
    mnist[40:240, 30:230] = np.asarray(
        Image.fromarray(images[11, ..., 0].astype(np.uint8)).resize((200, 200))
    )
    return {
        "draw-one-white-on-black": (
            "a drawn 1, the page's own pad",
            1,
            canvas(stroke_canvas(one), "white-on-black"),
        ),
        "draw-zero-black-on-white": (
            "a drawn 0, black pen on white",
            0,
            canvas(stroke_canvas(zero, True), "black-on-white"),
        ),
        "draw-seven-transparent": (
            "a drawn 7, white pen on a transparent canvas",
            7,
            canvas(stroke_canvas(seven), "transparent"),
        ),
        "draw-four-small-corner": (
            "a small 4 drawn in the top-left corner",
            4,
            canvas(four, "white-on-black"),
        ),
        "draw-mnist-enlarged": (
            "MNIST test digit 11 enlarged on the pad",
            int(labels[11]),
            canvas(mnist, "white-on-black"),
        ),
        "draw-blank": ("an empty pad", None, canvas(np.zeros((CANVAS, CANVAS), np.uint8), "white-on-black")),
    }


PHOTOS = {  # name: (kind, frame)
    "photo-clean": ("clean", (200, 200)),
    "photo-inverted": ("inverted", (200, 200)),
    "photo-small": ("small", (320, 240)),
    "photo-off-centre": ("off-centre", (240, 200)),
    "photo-rotated": ("rotated", (200, 200)),
    "photo-thin-pen": ("thin pen", (200, 200)),
    "photo-blurred": ("blurred", (200, 200)),
    "photo-noisy": ("noisy", (200, 200)),
    "photo-uneven-lighting": ("uneven lighting", (240, 200)),
    "photo-jpeg-q30": ("jpeg q30", (200, 200)),
    "photo-colour": ("colour", (200, 240)),
    "photo-stray-mark": ("stray mark", (240, 200)),
    "photo-phone": ("phone", (200, 200)),
}


def photos() -> dict[str, tuple[str, int | None, np.ndarray]]:
    images, labels = load_digits("mnist")
    rng = np.random.default_rng(2024)
    out = {}
    for n, (name, (kind, frame)) in enumerate(PHOTOS.items()):
        index = 100 + 37 * n
        data, _ = render(images[index, ..., 0], replace(KINDS[kind], frame=frame), rng)
        pixels = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGBA"))
        out[name] = (f"photo-like MNIST test digit {index}: {kind}", int(labels[index]), pixels)
    # Larger than the working size, so the block averaging runs; noise-free so the file stays small.
    style = replace(KINDS["uneven lighting"], frame=(800, 700), noise=0.0)
    data, _ = render(images[999, ..., 0], style, rng)
    out["photo-large-frame"] = (
        "MNIST test digit 999, 800x700, lit unevenly",
        int(labels[999]),
        np.asarray(Image.open(io.BytesIO(data)).convert("RGBA")),
    )
    y, x = np.mgrid[0:200, 0:200] / 200.0
    paper = 210 * (0.5 + 0.3 * x + 0.2 * y) + rng.normal(0, 6, (200, 200))
    blank = np.clip(np.rint(paper), 0, 255).astype(np.uint8)
    out["photo-blank"] = (
        "blank paper, lit unevenly, noisy",
        None,
        np.asarray(Image.fromarray(blank).convert("RGBA")),
    )
    return out


def main() -> None:
    VECTORS.mkdir(exist_ok=True)
    manifest = {}
    for name, (description, label, pixels) in {**drawings(), **photos()}.items():
        Image.fromarray(pixels).save(VECTORS / f"{name}.png", optimize=True)
        try:
            output = digit(pixels)
        except InvalidInput:
            if label is not None:
                raise
            expected = None
        else:
            expected = f"{name}.expected.png"
            Image.fromarray(np.clip(np.floor(output + 0.5), 0, 255).astype(np.uint8)).save(VECTORS / expected)
        manifest[name] = {"description": description, "label": label, "expected": expected}
    (VECTORS / "vectors.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(manifest)} vectors to {VECTORS}")


if __name__ == "__main__":
    main()

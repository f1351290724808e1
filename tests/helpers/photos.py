"""Photo-like images of real MNIST test digits: what a phone photo of a handwritten digit looks like.

Each kind of corruption in :data:`KINDS` is one :class:`Style`; :func:`render` draws a 28x28 MNIST digit
(light ink on black, 0..255) into a frame as ink on paper and returns the encoded file::

    from tests.helpers.photos import KINDS, render, photos

    data, content_type = render(digit, KINDS["phone"], np.random.default_rng(0))
    for data, content_type, label in photos("noisy", count=200, seed=1):  # real test digits and labels
        ...

Everything is seeded, so a kind and a seed always give the same files; the benchmark that measures the
accuracy per kind (``bench/preprocess.py``) and the tests that assert a bar use the same generator.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tests.helpers.data import load_digits


@dataclass(frozen=True)
class Style:
    """How one photo is made. Ranges are (low, high), drawn uniformly per image."""

    frame: tuple[int, int] = (300, 300)
    """Width and height of the photo, in pixels."""
    digit: tuple[float, float] = (0.30, 0.36)
    """Height of the digit (MNIST's 20-pixel box) as a fraction of the frame's shorter side."""
    offset: float = 0.05
    """Largest shift of the digit's centre from the frame's centre, as a fraction of the frame."""
    angle: float = 0.0
    """Largest rotation either way, in degrees."""
    pen: float = 0.0
    """Thinner strokes than MNIST's: the width taken off, as a fraction of the digit's height."""
    blur: tuple[float, float] = (0.6, 1.0)
    """Gaussian blur radius in pixels (focus, motion)."""
    paper: tuple[float, float] = (200.0, 235.0)
    """Background brightness."""
    ink: tuple[float, float] = (25.0, 60.0)
    """Ink brightness (below the paper: dark on light; above it: light on dark)."""
    tint: bool = False
    """Colour photo: warm paper, blue, black or red ink, saved as RGB."""
    lighting: float = 0.0
    """Depth of the lighting gradient: the dimmest part of the frame gets (1 - lighting) of the light."""
    noise: float = 2.0
    """Standard deviation of the sensor noise, in grey levels."""
    jpeg: int | None = None
    """JPEG quality, or None for PNG."""
    exif: bool = False
    """Store the photo rotated by a quarter turn with an EXIF orientation tag that undoes it."""
    stray: bool = False
    """A stray pen mark beside the digit, away from it."""


CLEAN = Style()
#: The kinds of corruption the accuracy table reports, each on its own over the clean photo.
KINDS: dict[str, Style] = {
    "clean": CLEAN,
    "inverted": replace(CLEAN, paper=(25.0, 60.0), ink=(200.0, 240.0)),
    "small": replace(CLEAN, frame=(400, 400), digit=(0.08, 0.12)),
    "off-centre": replace(CLEAN, offset=0.28, digit=(0.22, 0.3)),
    "rotated": replace(CLEAN, angle=20.0),
    "thin pen": replace(CLEAN, pen=0.06),
    "blurred": replace(CLEAN, blur=(2.5, 4.0)),
    "noisy": replace(CLEAN, noise=18.0),
    "uneven lighting": replace(CLEAN, lighting=0.6),
    "jpeg q30": replace(CLEAN, jpeg=30),
    "colour": replace(CLEAN, tint=True, jpeg=90),
    "large frame": replace(CLEAN, frame=(2400, 1800), digit=(0.2, 0.3), blur=(3.0, 5.0), jpeg=85),
    "exif rotated": replace(CLEAN, exif=True, jpeg=90),
    "stray mark": replace(CLEAN, stray=True, digit=(0.25, 0.3)),
    "phone": Style(
        digit=(0.3, 0.36), offset=0.15, angle=10.0, blur=(1.0, 2.0), lighting=0.5, noise=6.0, jpeg=80
    ),
}

_INKS = ((30.0, 50.0, 160.0), (35.0, 35.0, 40.0), (170.0, 30.0, 35.0))  # blue, black, red
_PAPER_TINT = np.array([1.0, 0.96, 0.86])


def render(digit: np.ndarray, style: Style, rng: np.random.Generator) -> tuple[bytes, str]:
    """The photo of ``digit`` (28x28, light ink on black, 0..255) in ``style``: (file bytes, content type)."""
    width, height = style.frame
    coverage = _place(digit, style, rng)
    paper, ink = _uniform(rng, style.paper), _uniform(rng, style.ink)
    if style.tint:
        paper_rgb = paper * _PAPER_TINT
        ink_rgb = np.array(_INKS[int(rng.integers(len(_INKS)))])
    else:
        paper_rgb, ink_rgb = np.full(3, paper), np.full(3, ink)
    pixels = paper_rgb * (1.0 - coverage[..., None]) + ink_rgb * coverage[..., None]
    pixels *= _lighting(width, height, style.lighting, rng)[..., None]
    pixels += rng.normal(0.0, style.noise, pixels.shape if style.tint else (height, width, 1))
    image = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    picture = Image.fromarray(image) if style.tint else Image.fromarray(image[..., 0])
    return _encode(picture, style, rng)


def photos(kind: str, count: int, seed: int = 0) -> Iterator[tuple[bytes, str, int]]:
    """``count`` photos of kind ``kind`` of real MNIST test digits: (file bytes, content type, label)."""
    images, labels = load_digits("mnist")
    rng = np.random.default_rng([seed, *kind.encode()])
    for index in rng.choice(len(images), size=count, replace=False):
        data, content_type = render(images[index, ..., 0], KINDS[kind], rng)
        yield data, content_type, int(labels[index])


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _place(digit: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    """Ink coverage 0..1 of the whole frame: the digit enlarged, rotated, blurred and put in place."""
    width, height = style.frame
    box = _uniform(rng, style.digit) * min(width, height)  # MNIST's 20-pixel box, in frame pixels
    side = max(8, round(28 * box / 20))
    tile = Image.fromarray(digit.astype(np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
    if style.pen:
        tile = tile.filter(ImageFilter.MinFilter(2 * round(style.pen * box / 2) + 1))
    if style.angle:
        angle = _uniform(rng, (-style.angle, style.angle))
        tile = tile.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=0)
    tile = tile.filter(ImageFilter.GaussianBlur(_uniform(rng, style.blur)))
    frame = Image.new("L", (width, height), 0)
    cx = width / 2 + rng.uniform(-style.offset, style.offset) * width
    cy = height / 2 + rng.uniform(-style.offset, style.offset) * height
    x = int(np.clip(cx - tile.width / 2, 0, width - tile.width))
    y = int(np.clip(cy - tile.height / 2, 0, height - tile.height))
    frame.paste(tile, (x, y))
    if style.stray:
        _stray_mark(frame, (x, y, x + tile.width, y + tile.height), box, rng)
    return np.asarray(frame, np.float64) / 255.0


def _stray_mark(
    frame: Image.Image, digit: tuple[int, int, int, int], box: float, rng: np.random.Generator
) -> None:
    """A short pen stroke in the widest margin beside the digit, at least a quarter digit away from it."""
    left, top, right, bottom = digit
    gap = box / 4
    margins = {"left": left - gap, "right": frame.width - right - gap}
    side = max(margins, key=lambda k: margins[k])
    length = min(box / 3, max(margins[side] - 4, 4))
    x0 = left - gap - length if side == "left" else right + gap
    y0 = rng.uniform(top, max(top + 1, bottom - length))
    end = (x0 + length * rng.uniform(0.5, 1.0), y0 + length * rng.uniform(-0.3, 0.3))
    ImageDraw.Draw(frame).line([(x0, y0), end], fill=255, width=max(2, round(box / 14)))


def _lighting(width: int, height: int, depth: float, rng: np.random.Generator) -> np.ndarray:
    """Light reaching each pixel, 1 - depth .. 1: a ramp in a random direction and an off-centre spot."""
    if depth <= 0:
        return np.ones((height, width))
    y, x = np.mgrid[0:height, 0:width]
    u, v = x / width - 0.5, y / height - 0.5
    theta = rng.uniform(0, 2 * np.pi)
    ramp = u * np.cos(theta) + v * np.sin(theta)
    sx, sy = rng.uniform(-0.3, 0.3, size=2)
    spot = np.exp(-((u - sx) ** 2 + (v - sy) ** 2) / 0.3)
    field = 0.6 * (ramp - ramp.min()) / np.ptp(ramp) + 0.4 * (spot - spot.min()) / np.ptp(spot)
    return np.asarray(1.0 - depth + depth * field)


def _encode(picture: Image.Image, style: Style, rng: np.random.Generator) -> tuple[bytes, str]:
    exif = None
    if style.exif:
        # The camera stored the pixels a quarter turn off and says so: orientation 6 means "rotate the
        # stored image 90 degrees clockwise to show it", so the stored pixels are turned the other way.
        orientation, turn = (
            (6, Image.Transpose.ROTATE_90) if rng.random() < 0.5 else (8, Image.Transpose.ROTATE_270)
        )
        picture = picture.transpose(turn)
        exif = Image.Exif()
        exif[0x0112] = orientation
    out = io.BytesIO()
    if style.jpeg is None:
        picture.save(out, "PNG", **({"exif": exif} if exif else {}))
        return out.getvalue(), "image/png"
    picture.save(out, "JPEG", quality=style.jpeg, **({"exif": exif} if exif else {}))
    return out.getvalue(), "image/jpeg"

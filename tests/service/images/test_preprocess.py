"""The image contract's preprocessing (``service/images/preprocess.py``) on real MNIST test digits.

Digits are rendered as a camera or a canvas would show them (tests/helpers/photos.py), and the 28x28
result is compared with what the same digit gives when it is clean, centred and upright.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFilter

from service.contract import Preprocessing
from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia
from service.images import digit as digit_fit
from service.images.digit import _max_filter, digit
from service.images.preprocess import prepare, prepare_all
from tests.helpers.data import load_digits
from tests.helpers.photos import KINDS, render

DIGIT = Preprocessing(height=28, width=28, color="grayscale", resize="digit")
VECTORS = Path(__file__).resolve().parents[2] / "web" / "vectors"


def mnist(index: int) -> np.ndarray:
    return load_digits("mnist")[0][index, ..., 0].astype(np.uint8)


def rgba(grey: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    g = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    a = np.full(g.shape, 255, np.uint8) if alpha is None else alpha.astype(np.uint8)
    return np.dstack([g, g, g, a])


def on_paper(
    index: int,
    frame: tuple[int, int] = (300, 300),
    at: tuple[int, int] | None = None,
    side: int = 140,
    paper: float = 220.0,
    ink: float = 40.0,
) -> np.ndarray:
    """MNIST digit ``index`` enlarged to ``side`` pixels, dark ink on light paper, top-left corner ``at``."""
    width, height = frame
    tile = np.asarray(Image.fromarray(mnist(index)).resize((side, side), Image.Resampling.BICUBIC)) / 255.0
    coverage = np.zeros((height, width))
    x, y = at if at is not None else ((width - side) // 2, (height - side) // 2)
    coverage[y : y + side, x : x + side] = tile
    return paper - (paper - ink) * coverage


def encode(array: np.ndarray, fmt: str = "PNG", **options: Any) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, fmt, **options)
    return out.getvalue()


def similar(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def ink_box(image: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    rows, cols = np.mgrid[: image.shape[0], : image.shape[1]]
    return float((image * rows).sum() / image.sum()), float((image * cols).sum() / image.sum())


# ---- digit: the MNIST recipe ------------------------------------------------------------------------


def test_mnist_digits_come_back_as_mnist() -> None:
    for index in range(20):
        original = mnist(index)
        output = digit(rgba(original))
        assert output.shape == (28, 28) and output.dtype == np.float64
        assert output.max() == pytest.approx(255) and output.min() == 0
        assert max(ink_box(output)) == 20
        row, col = centre_of_mass(output)
        assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5
        assert similar(output, original) > 0.9


def test_polarity_is_read_from_the_border() -> None:
    clean = digit(rgba(on_paper(0)))
    light_on_dark = digit(rgba(255 - on_paper(0)))  # chalk on a blackboard
    white_on_transparent = digit(rgba(np.full((300, 300), 255.0), alpha=255 - on_paper(0, paper=255, ink=0)))
    black_on_transparent = digit(rgba(np.zeros((300, 300)), alpha=255 - on_paper(0, paper=255, ink=0)))
    for other in (light_on_dark, white_on_transparent, black_on_transparent):
        assert similar(other, clean) > 0.98
    # Dim paper: the border is darker than mid-grey, yet the ink is darker still.
    assert similar(digit(rgba(on_paper(0, paper=110, ink=35))), clean) > 0.98


@pytest.mark.parametrize(
    ("frame", "side"), [((60, 45), 30), ((300, 300), 140), ((1400, 1100), 500), ((3000, 40), 36)]
)
def test_any_frame_size(frame: tuple[int, int], side: int) -> None:
    clean = digit(rgba(on_paper(1)))
    output = digit(rgba(on_paper(1, frame=frame, side=side)))
    assert max(ink_box(output)) == 20
    assert similar(output, clean) > 0.9


def test_off_centre_and_small_digits() -> None:
    clean = digit(rgba(on_paper(2)))
    corner = digit(rgba(on_paper(2, frame=(400, 300), at=(4, 250), side=44)))
    small = digit(rgba(on_paper(2, frame=(600, 600), at=(300, 120), side=40)))
    assert similar(corner, clean) > 0.9 and similar(small, clean) > 0.9
    for output in (corner, small):
        row, col = centre_of_mass(output)
        assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5


def test_lighting_gradients_are_removed() -> None:
    clean = digit(rgba(on_paper(3)))
    y, x = np.mgrid[0:300, 0:300] / 300.0
    for light in (0.3 + 0.7 * x, 1.0 - 0.6 * (x - 0.3) ** 2 - 0.6 * (y - 0.6) ** 2, 0.4 + 0.6 * y * x):
        lit = digit(rgba(on_paper(3) * light))
        assert similar(lit, clean) > 0.95
        assert max(ink_box(lit)) == 20
    # Without the background fit the shadowed corner would be ink: the box would be the whole frame.
    assert ink_box(digit(rgba(on_paper(3) * (0.3 + 0.7 * x)))) == ink_box(clean)


def test_sensor_noise_and_jpeg() -> None:
    clean = digit(rgba(on_paper(4)))
    rng = np.random.default_rng(0)
    noisy = digit(rgba(on_paper(4) + rng.normal(0, 18, (300, 300))))
    assert similar(noisy, clean) > 0.9
    bright = np.pad(noisy > 32, 1)
    neighbours = sum(np.roll(np.roll(bright, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    assert not (bright & (neighbours == 1)).any()  # no isolated specks of noise
    jpeg = prepare(encode(rgba(on_paper(4))[..., 0], "JPEG", quality=25), DIGIT)[..., 0]
    assert similar(jpeg, clean) > 0.95


def test_colour_photos_and_exif_orientation() -> None:
    paper = on_paper(5)
    colour = np.dstack([paper * 1.0, paper * 0.95, paper * 0.8]).clip(0, 255).astype(np.uint8)
    clean = digit(rgba(paper))
    assert similar(prepare(encode(colour, "JPEG", quality=90), DIGIT)[..., 0], clean) > 0.95
    exif = Image.Exif()
    exif[0x0112] = 6  # show rotated a quarter turn clockwise: the stored pixels are turned the other way
    stored = np.rot90(rgba(paper)[..., 0])
    upright = prepare(encode(np.ascontiguousarray(stored), exif=exif), DIGIT)[..., 0]
    np.testing.assert_allclose(upright, clean, atol=1e-4)
    assert similar(prepare(encode(np.ascontiguousarray(stored)), DIGIT)[..., 0], clean) < 0.5


def test_thin_pen_strokes_are_thickened_to_mnist_width(monkeypatch: pytest.MonkeyPatch) -> None:
    clean = digit(rgba(on_paper(6)))
    tile = Image.fromarray(mnist(6)).resize((140, 140), Image.Resampling.BICUBIC)
    coverage = np.zeros((300, 300))
    coverage[80:220, 80:220] = np.asarray(tile.filter(ImageFilter.MinFilter(5))) / 255.0
    pen = rgba(220 - 180 * coverage)
    thickened = digit(pen)
    assert similar(thickened, clean) > 0.9
    assert np.count_nonzero(thickened > 127) >= 0.8 * np.count_nonzero(clean > 127)
    monkeypatch.setattr(digit_fit, "_STROKE", 0.0)  # the same digit without the step
    assert similar(digit(pen), clean) < 0.8


def test_blank_and_near_blank_images_have_no_digit() -> None:
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:200, 0:300] / 300.0
    specks = np.full((200, 300), 220.0)
    specks[rng.integers(0, 200, 6), rng.integers(0, 300, 6)] = 20.0  # dust, not a digit
    faint = on_paper(7, frame=(300, 200), side=120, paper=220, ink=210)  # 5 % darker than the paper
    for image in (
        np.full((200, 300), 220.0),
        np.zeros((28, 28)),
        220 + rng.normal(0, 10, (200, 300)),
        220 * (0.4 + 0.6 * x * y),
        specks,
        faint,
    ):
        with pytest.raises(InvalidInput, match=r"^no digit found") as caught:
            digit(rgba(image))
        assert caught.value.status == 400
    with pytest.raises(InvalidInput, match="no digit found"):
        digit(rgba(np.zeros((300, 300)), alpha=np.zeros((300, 300))))  # an empty transparent canvas
    with pytest.raises(InvalidInput, match="no digit found"):
        prepare(encode(np.full((1, 1), 255, np.uint8)), DIGIT)


def test_blobs_the_largest_and_its_pieces_are_the_digit() -> None:
    clean = digit(rgba(on_paper(8)))
    # A stray stroke and a blot far from the digit are dropped.
    stray = on_paper(8)
    stray[20:26, 10:60] = 40.0
    stray[260:280, 260:280] = 40.0
    np.testing.assert_allclose(digit(rgba(stray)), clean, atol=0.5)
    # Test digit 8 is a 5 whose bar is a piece of its own; cut its downstroke too: three pieces, one 5.
    broken = on_paper(8)
    broken[148:154] = 220.0
    assert similar(digit(rgba(broken)), clean) > 0.9
    # A speck of dust beside the digit is not part of it.
    dusty = on_paper(8)
    dusty[75:77, 150:152] = 40.0
    np.testing.assert_allclose(digit(rgba(dusty)), clean, atol=0.5)
    # Two digits side by side: the one with more ink (a 0, test digit 3) is read, the 1 is not mixed in.
    assert (mnist(3) > 25).sum() > 2 * (mnist(2) > 25).sum()
    pair = on_paper(3, frame=(500, 300), at=(10, 80)) + on_paper(2, frame=(500, 300), at=(330, 80)) - 220
    assert similar(digit(rgba(pair)), digit(rgba(on_paper(3)))) > 0.98


def test_max_filter_is_a_sliding_maximum() -> None:
    a = np.random.default_rng(2).random((23, 31))
    for radius in (1, 2, 5, 12):
        padded = np.pad(a, ((0, 0), (radius, radius)))
        naive = np.stack([padded[:, x : x + 2 * radius + 1].max(axis=1) for x in range(31)], axis=1)
        np.testing.assert_array_equal(_max_filter(a, radius, 1), naive)


# ---- prepare: every resize, range and colour --------------------------------------------------------


def test_output_shape_range_and_colour() -> None:
    data = encode(rgba(on_paper(0))[..., 0])
    grey = prepare(data, DIGIT)
    assert grey.shape == (28, 28, 1) and grey.dtype == np.float32
    for input_range in ((0.0, 1.0), (-1.0, 1.0), (255.0, 0.0)):
        p = Preprocessing(height=28, width=28, color="rgb", input_range=input_range, resize="digit")
        out = prepare(data, p)
        assert out.shape == (28, 28, 3)
        np.testing.assert_array_equal(out[..., 0], out[..., 2])
        black, white = input_range
        np.testing.assert_allclose(out[..., 0], black + grey[..., 0] / 255 * (white - black), atol=1e-5)
    larger = prepare(data, Preprocessing(height=56, width=42, color="grayscale", resize="digit"))[..., 0]
    assert larger.shape == (56, 42)
    height, width = ink_box(larger)
    assert (height == 40 and width <= 30) or (width == 30 and height <= 40)  # round(20/28 x 56, 20/28 x 42)


def test_stretch_and_centre_crop_are_pil_bilinear() -> None:
    picture = load_digits("fashion-mnist")[0][0, ..., 0].astype(np.uint8)
    wide = Image.fromarray(picture).resize((84, 42), Image.Resampling.BICUBIC)
    data = encode(np.asarray(wide))
    stretch = prepare(data, Preprocessing(height=28, width=28, color="grayscale", resize="stretch"))
    np.testing.assert_array_equal(
        stretch[..., 0], np.asarray(wide.resize((28, 28), Image.Resampling.BILINEAR))
    )
    crop = prepare(data, Preprocessing(height=28, width=28, color="grayscale", resize="center_crop"))
    expected = wide.resize((28, 28), Image.Resampling.BILINEAR, box=(21, 0, 63, 42))
    np.testing.assert_array_equal(crop[..., 0], np.asarray(expected))
    rgb = prepare(data, Preprocessing(height=32, width=32, color="rgb", input_range=(0, 1), resize="stretch"))
    assert rgb.shape == (32, 32, 3) and rgb.min() >= 0.0 and rgb.max() <= 1.0
    # A stretch model takes a blank image as it is: only digit models look for ink.
    blank = prepare(
        encode(np.zeros((40, 40), np.uint8)),
        Preprocessing(height=28, width=28, color="grayscale", resize="stretch"),
    )
    assert not blank.any()


def test_decoder_guards_still_apply() -> None:
    with pytest.raises(UnsupportedMedia):
        prepare(b"GIF89a....", DIGIT)
    with pytest.raises(PayloadTooLarge, match="the limit is 1000"):
        prepare(encode(np.zeros((40, 40), np.uint8)), DIGIT, max_pixels=1000)
    with pytest.raises(InvalidInput, match="corrupt"):
        prepare(encode(rgba(on_paper(0))[..., 0])[:300], DIGIT)


def test_prepare_all_names_the_image_that_fails() -> None:
    good, blank = encode(rgba(on_paper(0))[..., 0]), encode(np.full((50, 50), 200, np.uint8))
    batch = prepare_all([("a.png", good), (None, good)], DIGIT)
    assert batch.shape == (2, 28, 28, 1)
    with pytest.raises(InvalidInput, match=r"^image 2 of 3 \('b.png'\): no digit found"):
        prepare_all([("a.png", good), ("b.png", blank), (None, good)], DIGIT)
    with pytest.raises(InvalidInput, match=r"^no digit found"):
        prepare_all([("b.png", blank)], DIGIT)


def test_photo_kinds_render_and_read() -> None:
    rng = np.random.default_rng(3)
    for kind, style in KINDS.items():
        data, content_type = render(mnist(0), style, rng)
        assert content_type == ("image/png" if style.jpeg is None else "image/jpeg"), kind
        assert prepare(data, DIGIT).max() > 0, kind


def test_shared_vectors_reproduce_exactly() -> None:
    """The vectors the browser test also checks preprocess.js against (tests/web/make_vectors.py)."""
    manifest = json.loads((VECTORS / "vectors.json").read_text())
    assert len(manifest) >= 12
    for name, entry in manifest.items():
        pixels = np.asarray(Image.open(VECTORS / f"{name}.png").convert("RGBA"))
        if entry["expected"] is None:
            with pytest.raises(InvalidInput, match="no digit found"):
                digit(pixels)
            continue
        expected = np.asarray(Image.open(VECTORS / entry["expected"]), np.float64)
        np.testing.assert_allclose(digit(pixels), expected, atol=0.5 + 1e-6, err_msg=name)

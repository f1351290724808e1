"""Image upload decoding, on real MNIST and CIFAR-10 test images."""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia
from service.images.decode import decode_image

DATA_DIR = Path(os.environ.get("DATA_DIR", Path(__file__).resolve().parents[4] / "shared" / "data"))
LIMIT = 4096 * 4096


@cache
def mnist_digits(count: int = 8) -> np.ndarray:
    """The first ``count`` MNIST test digits, (count, 28, 28) uint8, read from the IDX file."""
    with gzip.open(DATA_DIR / "mnist" / "t10k-images-idx3-ubyte.gz", "rb") as f:
        head = f.read(16)
        magic, total, rows, cols = struct.unpack(">IIII", head)
        assert magic == 2051 and total == 10_000 and (rows, cols) == (28, 28)
        pixels = f.read(count * rows * cols)
    return np.frombuffer(pixels, np.uint8).reshape(count, rows, cols)


@cache
def cifar_images() -> np.ndarray:
    with np.load(DATA_DIR / "cifar10" / "cifar10_subset_lossless.npz") as data:
        return np.asarray(data["x_test"][:4])


def encode(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def decode(data: bytes, size: int = 28, channels: int = 1, max_pixels: int = LIMIT) -> np.ndarray:
    return decode_image(data, height=size, width=size, channels=channels, max_pixels=max_pixels)


def test_mnist_png_round_trip_is_exact() -> None:
    for digit in mnist_digits():
        result = decode(encode(Image.fromarray(digit)))
        assert result.shape == (1, 28, 28, 1) and result.dtype == np.float32
        np.testing.assert_array_equal(result[0, :, :, 0], digit)
    assert mnist_digits().max() == 255  # real strokes, not an all-black fixture


def test_mnist_jpeg_decodes_close_to_the_original() -> None:
    for digit in mnist_digits():
        result = decode(encode(Image.fromarray(digit), "JPEG", quality=95))[0, :, :, 0]
        assert np.abs(result - digit).mean() < 3.0
        assert np.corrcoef(result.ravel(), digit.ravel())[0, 1] > 0.99


def test_colour_and_palette_modes_convert_to_gray() -> None:
    digit = mnist_digits()[0]
    rgb = Image.fromarray(np.stack([digit] * 3, axis=-1))
    palette = Image.fromarray(digit, "P")
    palette.putpalette([v for i in range(256) for v in (i, i, i)])
    sixteen = Image.fromarray(digit.astype(np.uint16) * 257)
    assert sixteen.mode == "I;16"
    for image in (rgb, palette, sixteen, Image.fromarray(digit).convert("LA")):
        result = decode(encode(image))[0, :, :, 0]
        np.testing.assert_array_equal(result, digit, err_msg=image.mode)
    bilevel = decode(encode(Image.fromarray(digit > 127)))[0, :, :, 0]
    np.testing.assert_array_equal(bilevel, np.where(digit > 127, 255.0, 0.0))


def test_transparency_is_composited_onto_black_for_gray_models() -> None:
    digit = mnist_digits()[1]
    # A white pen on a transparent canvas: colour is white everywhere, alpha holds the strokes.
    canvas = np.full((28, 28, 4), 255, np.uint8)
    canvas[..., 3] = digit
    result = decode(encode(Image.fromarray(canvas, "RGBA")))[0, :, :, 0]
    np.testing.assert_array_equal(result, digit)
    # A palette image whose white background index is marked transparent.
    palette = Image.fromarray(np.where(digit > 127, 1, 0).astype(np.uint8), "P")
    palette.putpalette([255, 255, 255, 255, 255, 255])
    palette.info["transparency"] = 0
    result = decode(encode(palette, transparency=0))[0, :, :, 0]
    np.testing.assert_array_equal(result, np.where(digit > 127, 255.0, 0.0))


def test_rgb_models_keep_colours_and_drop_alpha() -> None:
    for picture in cifar_images():
        result = decode(encode(Image.fromarray(picture)), size=32, channels=3)
        assert result.shape == (1, 32, 32, 3)
        np.testing.assert_array_equal(result[0], picture)
        rgba = np.dstack([picture, np.zeros((32, 32), np.uint8)])
        np.testing.assert_array_equal(
            decode(encode(Image.fromarray(rgba, "RGBA")), size=32, channels=3)[0], picture
        )
    digit = mnist_digits()[2]
    gray_as_rgb = decode(encode(Image.fromarray(digit)), channels=3)[0]
    for channel in range(3):
        np.testing.assert_array_equal(gray_as_rgb[..., channel], digit)


def test_colour_to_gray_uses_luma() -> None:
    picture = cifar_images()[0].astype(np.float64)
    luma = picture @ np.array([0.299, 0.587, 0.114])
    result = decode(encode(Image.fromarray(cifar_images()[0])), size=32)[0, :, :, 0]
    assert np.abs(result - luma).max() <= 1.0


def test_resizing_to_the_model_size() -> None:
    digit = mnist_digits()[3]
    big = Image.fromarray(digit).resize((56, 56), Image.Resampling.NEAREST)
    result = decode(encode(big))[0, :, :, 0]
    assert result.shape == (28, 28)
    assert np.abs(result - digit).mean() < 8.0
    assert np.corrcoef(result.ravel(), digit.ravel())[0, 1] > 0.97
    # A large JPEG goes through libjpeg's reduced-size decoding first.
    photo = encode(Image.fromarray(digit).resize((280, 280), Image.Resampling.BICUBIC), "JPEG", quality=95)
    result = decode(photo)[0, :, :, 0]
    assert np.corrcoef(result.ravel(), digit.ravel())[0, 1] > 0.97
    # Colour resized and channel-converted to a 32x32x3 model.
    colour = Image.fromarray(cifar_images()[1]).resize((64, 48), Image.Resampling.BILINEAR)
    assert decode(encode(colour), size=32, channels=3).shape == (1, 32, 32, 3)
    small = decode(encode(Image.fromarray(digit).resize((20, 20))))
    assert small.shape == (1, 28, 28, 1) and small.min() >= 0.0 and small.max() <= 255.0


def test_exif_orientation_is_applied() -> None:
    digit = mnist_digits()[4]
    exif = Image.Exif()
    exif[0x0112] = 3  # Orientation: rotated 180 degrees
    result = decode(encode(Image.fromarray(digit), exif=exif))[0, :, :, 0]
    np.testing.assert_array_equal(result, digit[::-1, ::-1])


def with_png_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrite a PNG's IHDR dimensions (and its CRC); the pixel data stays tiny."""
    ihdr = png[12:16] + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def with_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    at = jpeg.index(b"\xff\xc0")  # baseline start-of-frame: marker, length, precision, height, width
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


def test_decompression_bombs_are_refused_before_decoding() -> None:
    png = encode(Image.fromarray(mnist_digits()[0]))
    # If pixels were decoded, the 28x28 IDAT would fail as truncated (400), not 413.
    with pytest.raises(
        PayloadTooLarge, match="image is 100000x100000 = 10000000000 pixels; the limit is"
    ) as caught:
        decode(with_png_size(png, 100_000, 100_000))
    assert caught.value.status == 413
    with pytest.raises(InvalidInput):
        decode(with_png_size(png, 1000, 1000))  # within the limit: decoded, and found short
    jpeg = encode(Image.fromarray(mnist_digits()[0]), "JPEG")
    with pytest.raises(PayloadTooLarge, match="60000x60000"):
        decode(with_jpeg_size(jpeg, 60_000, 60_000))
    # 20000 x 20000 mode "1" is 50 MB of pixels but compresses to about 60 kB.
    sheet = encode(Image.new("1", (20_000, 20_000)), optimize=True)
    assert len(sheet) < 200_000
    with pytest.raises(PayloadTooLarge, match="20000x20000"):
        decode(sheet)


def test_pixel_limit_is_inclusive() -> None:
    png = encode(Image.fromarray(mnist_digits()[0]))
    assert decode(png, max_pixels=784).shape == (1, 28, 28, 1)
    with pytest.raises(PayloadTooLarge, match="the limit is 783"):
        decode(png, max_pixels=783)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP"])
def test_other_formats_are_unsupported(fmt: str) -> None:
    data = encode(Image.fromarray(mnist_digits()[0]), fmt)
    with pytest.raises(UnsupportedMedia, match=r"unsupported image type; send PNG or JPEG") as caught:
        decode(data)
    assert caught.value.status == 415


@pytest.mark.parametrize(
    "data", [b"", b"hello world", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"\x89PN"]
)
def test_garbage_is_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedMedia):
        decode(data)


def test_corrupt_images_are_invalid_input() -> None:
    digit = Image.fromarray(mnist_digits()[0])
    png, jpeg = encode(digit), encode(digit, "JPEG")
    corrupt_idat = bytearray(png)
    corrupt_idat[png.index(b"IDAT") + 10] ^= 0xFF
    for data in (
        png[: len(png) // 2],
        png[:20],
        jpeg[: len(jpeg) // 2],
        png[:8] + b"\0" * 64,
        bytes(corrupt_idat),
    ):
        with pytest.raises(InvalidInput) as caught:
            decode(data)
        assert caught.value.status == 400


def test_unsupported_channel_count() -> None:
    with pytest.raises(InvalidInput, match="4-channel"):
        decode(encode(Image.fromarray(mnist_digits()[0])), channels=4)

"""Decoding image files into model input and into the on-disk cache, and reading rows back from it."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.contract import Preprocessing
from training.errors import UnreadableImage
from training.imagecache import (
    Header,
    Progress,
    build_cache,
    fit,
    load_image,
    read_header,
    to_input_range,
)

RGB16 = Preprocessing(height=16, width=16, color="rgb", resize="stretch")


def noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def save(path: Path, array: np.ndarray, **kwargs: object) -> Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


def test_header_size_and_colour(tmp_path: Path) -> None:
    assert read_header(save(tmp_path / "g.png", noise((20, 30)))) == Header(30, 20, True)
    header = read_header(save(tmp_path / "c.jpg", noise((20, 30, 3))))
    assert (header.width, header.height, header.grayscale) == (30, 20, False)
    gray_palette = Image.fromarray(noise((8, 8))).convert("P")
    gray_palette.putpalette([v for i in range(256) for v in (i, i, i)])
    gray_palette.save(tmp_path / "p.png")
    assert read_header(tmp_path / "p.png").grayscale
    Image.fromarray(noise((8, 8, 3))).convert("P").save(tmp_path / "q.png")
    assert not read_header(tmp_path / "q.png").grayscale
    wide = Image.fromarray((noise((8, 8)).astype(np.uint16) * 257).astype(np.uint16))
    wide.save(tmp_path / "w.png")
    assert read_header(tmp_path / "w.png").grayscale


def test_header_applies_exif_rotation(tmp_path: Path) -> None:
    image = Image.fromarray(noise((20, 40, 3)))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    image.save(tmp_path / "rotated.jpg", exif=exif)
    header = read_header(tmp_path / "rotated.jpg")
    assert (header.width, header.height) == (20, 40)
    pre = Preprocessing(height=40, width=20, color="rgb", resize="stretch")
    assert load_image(tmp_path / "rotated.jpg", pre).shape == (40, 20, 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GIF89a" + bytes(100), "not a PNG or JPEG file"),
        (b"\x89PNG\r\n\x1a\n" + bytes(10), "corrupt image header"),
        (b"", "not a PNG or JPEG file"),
    ],
)
def test_unreadable_headers(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(data)
    with pytest.raises(UnreadableImage, match=message) as caught:
        read_header(path)
    assert str(path) in str(caught.value)


def test_pixel_limit_is_checked_from_the_header(tmp_path: Path) -> None:
    path = save(tmp_path / "big.png", noise((100, 100)))
    with pytest.raises(UnreadableImage, match=r"10,000 pixels \(100x100\), more than the limit of 9,999"):
        load_image(path, RGB16, max_pixels=9999)


@pytest.mark.parametrize("kind", ["PNG", "JPEG"])
def test_truncated_image_is_unreadable(tmp_path: Path, kind: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(noise((64, 64, 3))).save(buffer, kind)
    path = tmp_path / "cut.img"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(UnreadableImage, match="truncated"):
        load_image(path, RGB16)


def test_stretch_is_a_bilinear_resize_of_the_decoded_image(tmp_path: Path) -> None:
    pixels = noise((30, 50, 3))
    path = save(tmp_path / "a.png", pixels)
    expected = np.asarray(Image.fromarray(pixels).resize((16, 16), Image.Resampling.BILINEAR))
    assert np.array_equal(load_image(path, RGB16), expected)


def test_center_crop_covers_then_crops_the_centre() -> None:
    # A 40x20 image with black bands on the left and right fifths: covering 16x16 scales it to 32x16, and
    # the centre crop keeps the middle half, clear of the bands.
    pixels = np.full((20, 40, 1), 200, dtype=np.uint8)
    pixels[:, :8] = pixels[:, 32:] = 0
    pre = Preprocessing(height=16, width=16, color="grayscale", resize="center_crop")
    out = fit(pixels, pre)
    assert out.shape == (16, 16, 1)
    assert out.min() == 200
    reference = (
        Image.fromarray(pixels[..., 0]).resize((32, 16), Image.Resampling.BILINEAR).crop((8, 0, 24, 16))
    )
    assert np.array_equal(out[..., 0], np.asarray(reference))
    tall = fit(noise((50, 20, 3)), Preprocessing(height=10, width=10, color="rgb", resize="center_crop"))
    assert tall.shape == (10, 10, 3)


def test_colour_conversion_follows_the_contract(tmp_path: Path) -> None:
    rgb = noise((16, 16, 3))
    path = save(tmp_path / "c.png", rgb)
    gray = load_image(path, Preprocessing(height=16, width=16, color="grayscale", resize="stretch"))
    assert gray.shape == (16, 16, 1)
    assert np.array_equal(gray[..., 0], np.asarray(Image.fromarray(rgb).convert("L")))
    gray_file = save(tmp_path / "g.png", rgb[..., 0])
    assert np.array_equal(load_image(gray_file, RGB16), np.repeat(rgb[..., :1], 3, axis=2))


def test_digit_images_must_already_have_the_size(tmp_path: Path) -> None:
    digit = Preprocessing(height=28, width=28, color="grayscale", resize="digit")
    assert load_image(save(tmp_path / "ok.png", noise((28, 28))), digit).shape == (28, 28, 1)
    with pytest.raises(UnreadableImage, match=r"28x30 \(HxW\), not 28x28; with resize 'digit'"):
        load_image(save(tmp_path / "no.png", noise((28, 30))), digit)


def test_input_range_is_a_linear_map() -> None:
    pixels = np.array([0, 51, 255], dtype=np.uint8)
    assert np.allclose(to_input_range(pixels, (0.0, 1.0)), [0.0, 0.2, 1.0])
    assert np.allclose(to_input_range(pixels, (-1.0, 1.0)), [-1.0, -0.6, 1.0])
    assert np.allclose(to_input_range(pixels, (255.0, 0.0)), [255.0, 204.0, 0.0])
    assert to_input_range(pixels, (0.0, 255.0)).dtype == np.float32


def write_files(directory: Path, count: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return [save(directory / f"{i}.png", noise((10 + i, 20, 3), seed=i)) for i in range(count)]


def test_cache_holds_every_readable_image_and_lists_the_rest(tmp_path: Path) -> None:
    files = write_files(tmp_path / "images", 6)
    (tmp_path / "images" / "text.png").write_text("not an image")
    files.insert(2, tmp_path / "images" / "text.png")
    cache = build_cache(files, RGB16, tmp_path / "cache", workers=2)
    assert cache.kept.tolist() == [0, 1, 3, 4, 5, 6]
    assert cache.failures == ((str(files[2]), "not a PNG or JPEG file"),)
    assert not cache.reused
    assert cache.images.shape == (6, 16, 16, 3)
    for row, index in enumerate(cache.kept):
        assert np.array_equal(cache.images.take(np.array([row]))[0], load_image(files[index], RGB16))
    stored = np.load(cache.images.path)  # a plain .npy file
    assert stored.shape == (6, 16, 16, 3)
    assert np.array_equal(stored, cache.images.head(100))
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".json", ".npy"]  # nothing partial


def test_strict_stops_at_the_first_unreadable_image(tmp_path: Path) -> None:
    files = write_files(tmp_path / "images", 3)
    broken = tmp_path / "images" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff" + bytes(50))
    with pytest.raises(UnreadableImage, match=r"broken\.jpg: .*\(--strict\)"):
        build_cache([*files, broken], RGB16, tmp_path / "cache", strict=True)
    assert list((tmp_path / "cache").iterdir()) == []


def test_kept_cache_is_reused_until_a_file_changes(tmp_path: Path) -> None:
    files = write_files(tmp_path / "images", 4)
    first = build_cache(files, RGB16, tmp_path / "cache")
    again = build_cache(files, RGB16, tmp_path / "cache")
    assert again.reused
    assert again.images.path == first.images.path
    other = build_cache(
        files, Preprocessing(height=8, width=8, color="rgb", resize="stretch"), tmp_path / "cache"
    )
    assert not other.reused
    save(files[0], noise((12, 12, 3), seed=99))
    os.utime(files[0], ns=(1, 1))
    changed = build_cache(files, RGB16, tmp_path / "cache")
    assert not changed.reused
    assert np.array_equal(changed.images.head(1)[0], load_image(files[0], RGB16))


def test_progress_reports_counts(tmp_path: Path) -> None:
    stream = io.StringIO()
    progress = Progress(stream=stream, every_s=3600)
    progress(1, 4, 0)  # within the interval: quiet
    progress(4, 4, 1)  # the end is always reported
    (line,) = stream.getvalue().splitlines()
    assert line.startswith("decoding 4/4 images (100%, ")
    assert line.endswith(", 1 unreadable)")


def test_a_damaged_kept_cache_is_rebuilt(tmp_path: Path) -> None:
    files = write_files(tmp_path / "images", 3)
    first = build_cache(files, RGB16, tmp_path / "cache")
    first.images.path.with_suffix(".json").write_text("{not json")
    again = build_cache(files, RGB16, tmp_path / "cache")
    assert not again.reused
    assert np.array_equal(again.images.head(3), first.images.head(3))
    first.images.path.write_bytes(b"garbage")
    assert not build_cache(files, RGB16, tmp_path / "cache").reused


def test_an_unwritable_cache_directory_is_a_data_error(tmp_path: Path) -> None:
    from training.errors import DataError

    files = write_files(tmp_path / "images", 1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="cannot write the image cache in"):
        build_cache(files, RGB16, tmp_path / "file")

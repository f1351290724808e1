"""Image files to model input, decoded once into a uint8 cache on disk and read back a batch at a time.

Every file goes through the service's guarded decoder (:func:`service.images.decode.decode_image`: PNG
and JPEG only, the pixel limit checked from the header before a pixel is allocated, corrupt files refused) at
its own size, and is then brought to the model's input as its ``preprocessing`` entry says: ``stretch`` is a
PIL bilinear resize of the whole image, ``center_crop`` resizes so the image covers HxW and crops the
centre, ``digit`` takes images that are already HxW (digit-style data comes fitted, as MNIST does; the
fit itself is done when serving).

Rows are appended one by one to a ``.npy`` file (uint8 ``(N, H, W, C)``), decoded on a few threads (Pillow
releases the GIL), and read back with ``pread`` by :class:`DiskImages`: training holds a few batches of
pixels, never the data set (the kernel's page cache keeps the file's hot parts, outside the process).
A cache directory that is kept between runs is reused when the files, their sizes and modification times
and the preprocessing are the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin

from service.contract import Preprocessing
from service.errors import ServiceError
from service.images.decode import decode_image, stretch
from training.diskimages import DiskImages, npy_header
from training.errors import DataError, UnreadableImage

#: The service's default pixel limit for one image (``SERVE_MAX_IMAGE_PIXELS``).
MAX_PIXELS = 4096 * 4096
#: Bump when decoding or resizing changes, so that kept caches are rebuilt.
CACHE_FORMAT = 1
#: Files decoded ahead of the writer: bounds the decoded rows waiting in memory.
WINDOW = 256
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Header:
    """What an image file's header says: size as displayed (EXIF orientation applied) and colour."""

    width: int
    height: int
    grayscale: bool


def read_header(path: Path, max_pixels: int = MAX_PIXELS) -> Header:
    """The header of PNG or JPEG ``path``, read without decoding pixels; :class:`UnreadableImage` if not."""
    try:
        with path.open("rb") as stream:
            return _parse_header(stream, path, max_pixels)
    except OSError as exc:
        raise UnreadableImage(f"{path}: cannot read ({exc.strerror or exc})") from None


def _parse_header(stream: BinaryIO, path: Path, max_pixels: int) -> Header:
    magic = stream.read(8)
    stream.seek(0)
    try:
        # The plugin classes directly, as the service does: no process-wide pixel limit, no warning.
        if magic.startswith(b"\x89PNG\r\n\x1a\n"):
            image: Any = PngImagePlugin.PngImageFile(stream)
        elif magic.startswith(b"\xff\xd8\xff"):
            image = JpegImagePlugin.JpegImageFile(stream)
        else:
            raise UnreadableImage(f"{path}: not a PNG or JPEG file")
        width, height = image.size
        grayscale = image.mode in _GRAY_MODES or (image.mode == "P" and _gray_palette(image))
        if image.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):  # shown rotated by 90 degrees
            width, height = height, width
    except UnreadableImage:
        raise
    except Exception as exc:  # OSError, SyntaxError, struct.error, ... from hostile headers
        raise UnreadableImage(f"{path}: corrupt image header ({exc})") from None
    if width * height > max_pixels:
        raise UnreadableImage(
            f"{path}: {width * height:,} pixels ({height}x{width}), more than the limit of {max_pixels:,}"
        )
    return Header(width, height, grayscale)


def _gray_palette(image: Image.Image) -> bool:
    palette = np.asarray(image.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    return bool(len(palette)) and bool((palette == palette[:, :1]).all())


def load_image(path: Path, pre: Preprocessing, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` into uint8 ``(H, W, C)`` as ``pre`` says; :class:`UnreadableImage` if it cannot be."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnreadableImage(f"{path}: cannot read ({exc.strerror or exc})") from None
    header = _parse_header(io.BytesIO(data), path, max_pixels)
    try:
        pixels = decode_image(
            data,
            height=header.height,
            width=header.width,
            channels=pre.channels,
            max_pixels=max_pixels,
        )
    except ServiceError as exc:
        raise UnreadableImage(f"{path}: {exc.message}") from None
    native = pixels[0].astype(np.uint8)
    return fit(native, pre, path)


def fit(image: np.ndarray, pre: Preprocessing, path: Path | str = "image") -> np.ndarray:
    """Bring a uint8 ``(h, w, C)`` image to ``(pre.height, pre.width, C)`` with ``pre.resize``."""
    h, w = image.shape[:2]
    target_w, target_h = pre.width, pre.height
    if (h, w) == (target_h, target_w):
        return image
    if pre.resize == "digit":
        raise UnreadableImage(
            f"{path}: {h}x{w} (HxW), not {target_h}x{target_w}; with resize 'digit' the images must "
            "already have the model's size (the digit fit is done when serving)"
        )
    source = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
    if pre.resize == "stretch":
        resized = stretch(source, target_h, target_w)
    else:  # center_crop: cover HxW keeping the aspect ratio, then take the centre
        scale = max(target_w / w, target_h / h)
        cover = (max(target_w, round(w * scale)), max(target_h, round(h * scale)))
        left, top = (cover[0] - target_w) // 2, (cover[1] - target_h) // 2
        resized = source.resize(cover, Image.Resampling.BILINEAR).crop(
            (left, top, left + target_w, top + target_h)
        )
    return np.asarray(resized, dtype=np.uint8).reshape(target_h, target_w, image.shape[2])


def to_input_range(images: np.ndarray, input_range: Sequence[float]) -> np.ndarray:
    """uint8 pixels to model input values: ``black + p / 255 * (white - black)``, float32."""
    black, white = float(input_range[0]), float(input_range[1])
    pixels = np.asarray(images, dtype=np.float32)
    if (black, white) == (0.0, 255.0):
        return pixels
    return (black + pixels * np.float32((white - black) / 255.0)).astype(np.float32)


@dataclass
class Progress:
    """Prints ``decoding 12,000/100,000 images (12%) ...`` every ``every_s`` seconds at most, and last."""

    label: str = "decoding"
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    every_s: float = 2.0
    _started: float = field(default_factory=time.monotonic)
    _last: float = field(default_factory=time.monotonic)

    def __call__(self, done: int, total: int, skipped: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last < self.every_s:
            return
        self._last = now
        rate = done / max(now - self._started, 1e-9)
        extra = f", {skipped:,} unreadable" if skipped else ""
        share = done / total if total else 1.0
        print(
            f"{self.label} {done:,}/{total:,} images ({share:.0%}, {rate:,.0f}/s{extra})",
            file=self.stream,
            flush=True,
        )


@dataclass(frozen=True)
class Cache:
    """A built (or reused) cache: rows for the files ``kept`` (indices into the file list), in order."""

    images: DiskImages
    kept: np.ndarray
    #: ``(file, reason)`` for every file that could not be decoded.
    failures: tuple[tuple[str, str], ...]
    reused: bool


def cache_key(files: Sequence[Path], pre: Preprocessing, max_pixels: int) -> str:
    """A digest of the file list (names, sizes, modification times) and of how they are decoded."""
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, pre.model_dump(mode="json"), max_pixels]).encode())
    for file in files:
        stat = file.stat()
        digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def build_cache(
    files: Sequence[Path],
    pre: Preprocessing,
    directory: Path,
    *,
    max_pixels: int = MAX_PIXELS,
    strict: bool = False,
    workers: int = 0,
    progress: Callable[[int, int, int], None] | None = None,
) -> Cache:
    """Decode ``files`` into ``directory/<key>.npy``, or reuse it when it exists for the same inputs.

    Unreadable files are skipped and listed in :attr:`Cache.failures`; with ``strict`` the first one
    raises :class:`UnreadableImage`. ``workers`` 0 means one thread per CPU.
    """
    key = cache_key(files, pre, max_pixels)
    data_path, index_path = directory / f"{key}.npy", directory / f"{key}.json"
    reused = _reuse(data_path, index_path, strict)
    if reused is not None:
        return reused
    partial = directory / f".{key}.{os.getpid()}.partial"
    partial_index = partial.with_suffix(".index")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        kept, failures = _decode_all(files, pre, partial, max_pixels, strict, workers, progress)
        if not kept:
            raise DataError(f"none of the {len(files):,} image files could be decoded")
        partial_index.write_text(json.dumps({"kept": kept, "failures": failures}))
        partial.replace(data_path)
        partial_index.replace(index_path)
    except OSError as exc:
        raise DataError(f"cannot write the image cache in {directory}: {exc.strerror or exc}") from exc
    finally:
        for leftover in (partial, partial_index):
            with contextlib.suppress(OSError):
                leftover.unlink()
    return Cache(DiskImages(data_path), np.asarray(kept, dtype=np.int64), tuple(failures), reused=False)


def _reuse(data_path: Path, index_path: Path, strict: bool) -> Cache | None:
    """The cache kept at ``data_path``, or ``None`` when there is none, it is damaged, or ``strict`` must
    see files that it skipped fail."""
    if not (data_path.is_file() and index_path.is_file()):
        return None
    try:
        index = json.loads(index_path.read_text())
        listed = tuple((str(f), str(r)) for f, r in index["failures"])
        rows = np.asarray(index["kept"], dtype=np.int64)
        images = DiskImages(data_path)
    except (OSError, ValueError, KeyError, TypeError, DataError):
        return None  # rebuilt
    if (strict and listed) or len(rows) != len(images):
        return None
    return Cache(images, rows, listed, reused=True)


def _decode_all(
    files: Sequence[Path],
    pre: Preprocessing,
    path: Path,
    max_pixels: int,
    strict: bool,
    workers: int,
    progress: Callable[[int, int, int], None] | None,
) -> tuple[list[int], list[tuple[str, str]]]:
    shape = (len(files), pre.height, pre.width, pre.channels)
    kept: list[int] = []
    failures: list[tuple[str, str]] = []

    def one(file: Path) -> np.ndarray | str:
        try:
            return load_image(file, pre, max_pixels)
        except UnreadableImage as exc:
            return str(exc).removeprefix(f"{file}: ")

    with path.open("wb") as out, ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        out.write(npy_header(shape))
        pending: list[tuple[int, Future[np.ndarray | str]]] = []
        for start in range(0, len(files), WINDOW):
            pending = [(i, pool.submit(one, files[i])) for i in range(start, min(start + WINDOW, len(files)))]
            for i, future in pending:
                result = future.result()
                if isinstance(result, str):
                    if strict:
                        raise UnreadableImage(f"{files[i]}: {result} (--strict)")
                    failures.append((str(files[i]), result))
                else:
                    out.write(result.tobytes())
                    kept.append(i)
            if progress is not None:
                progress(len(kept) + len(failures), len(files), len(failures))
        out.seek(0)
        out.write(npy_header((len(kept), *shape[1:])))
        out.flush()
        os.fsync(out.fileno())
    return kept, failures

"""Uploaded images to model inputs, as a model's ``preprocessing`` entry declares (numpy and Pillow only).

:func:`prepare` decodes (through the guarded decoder of :mod:`service.images.decode`: format sniffing, pixel
limit, EXIF orientation) and returns ``(H, W, C)`` float32 in the model's ``input_range``:

- ``stretch``: the whole image resized to HxW (PIL ``BILINEAR``), aspect ratio not kept.
- ``center_crop``: resized so the shorter side fits, then the centre HxW (PIL ``BILINEAR``).
- ``digit``: MNIST-style, for a digit drawn on a canvas or written on paper and photographed:
  :func:`service.images.digit.digit` (its docstring describes the algorithm).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps

from service.contract import Preprocessing
from service.errors import PayloadTooLarge, ServiceError
from service.images.decode import convert, image_size, open_image, stretch
from service.images.digit import WORK_SIDE, digit

#: Same bound as the default ``SERVE_MAX_IMAGE_PIXELS``.
MAX_PIXELS = 4096 * 4096


def prepare(
    image: bytes | Image.Image, preprocessing: Preprocessing, *, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """The model input for one image file (or already decoded image): ``(H, W, C)`` float32.

    Raises the decoder's errors (415, 413, 400) and :class:`InvalidInput` "no digit found" for a
    ``digit`` model given an image without one.
    """
    p = preprocessing
    size = (p.width, p.height)
    if isinstance(image, bytes):
        # A digit can be a tenth of the frame, so its JPEG is decoded at the working size, not the model's.
        draft = size if p.resize != "digit" else (WORK_SIDE, WORK_SIDE)
        image = open_image(image, max_pixels=max_pixels, draft=draft)
    if p.resize == "digit":
        grey = digit(np.asarray(image.convert("RGBA")), p.height, p.width)
        pixels = np.repeat(grey[..., None], p.channels, axis=2)
    else:
        picture = convert(image, p.channels)
        if p.resize == "center_crop":
            picture = ImageOps.fit(picture, size, Image.Resampling.BILINEAR)
        else:
            picture = stretch(picture, p.height, p.width)
        pixels = np.asarray(picture, np.float64).reshape(p.height, p.width, p.channels)
    black, white = p.input_range
    return (black + pixels / 255.0 * (white - black)).astype(np.float32)


def request_pixels(images: Sequence[tuple[str | None, bytes]], limit: int) -> int:
    """The pixels of all the images together, from their headers (no pixel is decoded); 413 over ``limit``,
    and the decoder's 415 or 400 for a file that is no PNG or JPEG."""
    total = 0
    for n, (filename, data) in enumerate(images, 1):
        with _naming(n, len(images), filename):
            width, height = image_size(data)
        total += width * height
    if total > limit:
        raise PayloadTooLarge(
            f"the images of this request have {total} pixels together; the limit is {limit}"
        )
    return total


def prepare_all(
    images: Sequence[tuple[str | None, bytes]],
    preprocessing: Preprocessing,
    *,
    max_pixels: int = MAX_PIXELS,
    check: Callable[[], None] | None = None,
) -> np.ndarray:
    """:func:`prepare` for each (file name, bytes), stacked ``[N, H, W, C]``; with several images an
    error's message says which one (number and file name) it is about. ``check`` is called before each
    image and stops the work by raising (the caller's deadline passed, or its client went away)."""
    rows = []
    for n, (filename, data) in enumerate(images, 1):
        if check is not None:
            check()
        with _naming(n, len(images), filename):
            rows.append(prepare(data, preprocessing, max_pixels=max_pixels))
    return np.stack(rows)


@contextlib.contextmanager
def _naming(n: int, count: int, filename: str | None) -> Iterator[None]:
    """Prefix the message of a ServiceError raised inside with the image it is about (of several)."""
    try:
        yield
    except ServiceError as exc:
        if count > 1:
            exc.message = f"image {n} of {count}{f' ({filename!r})' if filename else ''}: {exc.message}"
            exc.args = (exc.message,)
        raise

"""Image files (PNG, JPEG) to model input tensors, for the ``classify`` endpoint.

Decoding is guarded in this order: the format is sniffed from magic bytes (anything but PNG or JPEG
is 415); the header is read without decoding pixels and ``width * height`` is checked against
``max_pixels`` (413), so a decompression bomb is refused before a pixel is allocated; only then are
pixels decoded (a corrupt or truncated file is 400).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# Grayscale modes wider than 8 bits (16-bit PNGs); Pillow's own conversion to "L" clips them at 255
# instead of scaling, so they are scaled here (65535 / 255 == 257).
_WIDE_GRAY = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def decode_image(data: bytes, *, height: int, width: int, channels: int, max_pixels: int) -> np.ndarray:
    """Decode a PNG or JPEG file into a float32 array ``(1, height, width, channels)`` of 0..255.

    ``channels`` is 1 (converted to grayscale) or 3 (RGB). Transparent pixels are composited onto
    black for grayscale models, because MNIST-style digits are light strokes on a black (0)
    background: a drawing with a transparent background must read as black, not white. RGB models
    get the stored colours with alpha dropped. EXIF orientation is applied, then the image is resized
    (bilinear, PIL's antialiasing ``BILINEAR``) to the model's size when it differs, without keeping the
    aspect ratio: the ``stretch`` preprocessing of the image contract.

    Raises :class:`UnsupportedMedia` for other formats, :class:`PayloadTooLarge` when the file claims
    more than ``max_pixels`` pixels, and :class:`InvalidInput` for a corrupt file.
    """
    image = stretch(
        convert(open_image(data, max_pixels=max_pixels, draft=(width, height)), channels), height, width
    )
    array = np.asarray(image, dtype=np.float32)
    return array.reshape(1, height, width, channels)


def stretch(picture: Image.Image, height: int, width: int) -> Image.Image:
    """The ``stretch`` resize of the image contract: the whole image to ``height`` x ``width``, PIL
    ``BILINEAR``, aspect ratio not kept. Serving and training both resize with this one function."""
    if picture.size == (width, height):
        return picture
    return picture.resize((width, height), Image.Resampling.BILINEAR)


def open_image(data: bytes, *, max_pixels: int, draft: tuple[int, int] | None = None) -> Image.Image:
    """The decoded, upright image in the file ``data``, checked in the order of the module docstring.

    EXIF orientation is applied and grayscale wider than 8 bits is scaled to 8 bits; the mode is
    otherwise the file's (``1``, ``L``, ``LA``, ``P``, ``RGB``, ``RGBA``, ...). ``draft`` (width, height)
    lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale, never below that size.
    """
    source = _open(data)
    pixels = source.width * source.height
    if pixels > max_pixels:
        raise PayloadTooLarge(
            f"image is {source.width}x{source.height} = {pixels} pixels; the limit is {max_pixels}"
        )
    try:
        if draft is not None and isinstance(source, JpegImagePlugin.JpegImageFile):
            source.draft(None, draft)
        source.load()
        ImageOps.exif_transpose(source, in_place=True)  # phone photos: EXIF orientation
        if source.mode in _WIDE_GRAY:
            wide = np.asarray(source, dtype=np.float32)
            return Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"image too large: {exc}") from None
    except Exception as exc:  # decoders raise many types on hostile input
        _refuse_metadata_bomb(exc)
        raise InvalidInput(f"corrupt or truncated image: {exc}") from None
    return source


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding a pixel (415 or 400 as :func:`open_image`)."""
    width, height = _open(data).size
    return width, height


def _open(data: bytes) -> ImageFile.ImageFile:
    """Read the header only. The plugin classes are used directly (not ``Image.open``) so that
    Pillow's process-wide ``MAX_IMAGE_PIXELS`` check and its warning are replaced by our limit."""
    plugin: Any
    if data.startswith(_PNG_MAGIC):
        plugin = PngImagePlugin.PngImageFile
    elif data.startswith(_JPEG_MAGIC):
        plugin = JpegImagePlugin.JpegImageFile
    else:
        raise UnsupportedMedia("unsupported image type; send PNG or JPEG")
    try:
        image: ImageFile.ImageFile = plugin(io.BytesIO(data))
    except Exception as exc:  # header parsers raise SyntaxError, struct.error, ...
        _refuse_metadata_bomb(exc)
        raise InvalidInput(f"corrupt image header: {exc}") from None
    return image


def _refuse_metadata_bomb(exc: Exception) -> None:
    """413 for compressed PNG text or ICC chunks that inflate past Pillow's bounds (``MAX_TEXT_CHUNK``,
    ``MAX_TEXT_MEMORY``): a decompression bomb in the metadata. Pillow raises a plain ValueError
    naming the bound, so the name is what tells them apart from a corrupt file."""
    if isinstance(exc, ValueError) and "MAX_TEXT" in str(exc):
        raise PayloadTooLarge(f"image metadata inflates too much: {exc}") from None


def convert(image: Image.Image, channels: int) -> Image.Image:
    """To mode "L" (``channels`` 1; transparency composited onto black) or "RGB" (3; alpha dropped)."""
    if channels not in (1, 3):
        raise InvalidInput(f"this model takes {channels}-channel images; image upload supports 1 or 3")
    transparent = image.mode in _ALPHA_MODES or "transparency" in image.info
    if channels == 3:
        # Palette images with a transparent index go through RGBA, as Pillow recommends.
        return (image.convert("RGBA") if transparent else image).convert("RGB")
    if not transparent:
        return image.convert("L")
    rgba = image.convert("RGBA")
    # L * alpha / 255 is "over" compositing onto a black background.
    return ImageChops.multiply(rgba.convert("L"), rgba.getchannel("A"))

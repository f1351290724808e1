"""Image rows on disk: a uint8 ``.npy`` file ``(N, H, W, C)`` read a batch at a time with ``pread``.

:class:`DiskImages` stands in for an in-memory array wherever the pipeline takes images (:data:`Images`):
``subset`` selects rows without reading them, ``take`` reads the rows asked for. Training then holds a few
batches of pixels, never the data set; the kernel's page cache keeps the file's hot parts, outside the
process.
"""

from __future__ import annotations

import os
import struct
import weakref
from pathlib import Path

import numpy as np

from training.errors import DataError

_NPY_MAGIC = b"\x93NUMPY\x01\x00"
# A fixed header length, so that a writer can rewrite the row count in place once it knows it.
_NPY_HEADER_BYTES = 128


class DiskImages:
    """Rows of a uint8 ``.npy`` image cache, read on demand; :meth:`subset` selects rows without reading.

    Reads use ``pread`` on one shared descriptor, so they are safe from several threads (tf.data's).
    """

    def __init__(self, path: Path, rows: np.ndarray | None = None, *, _file: _Npy | None = None) -> None:
        self.path = path
        self._file = _file or _Npy(path)
        total = self._file.shape[0]
        self._rows = np.arange(total, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(self._rows) and (self._rows.min() < 0 or self._rows.max() >= total):
            raise IndexError(f"row index out of range for {total} rows")
        self.dtype = np.dtype(np.uint8)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self._rows), *self._file.shape[1:])

    def __len__(self) -> int:
        return len(self._rows)

    def subset(self, indices: np.ndarray) -> DiskImages:
        """The rows ``indices`` (positions in this selection), still on disk."""
        return DiskImages(self.path, self._rows[np.asarray(indices, dtype=np.int64)], _file=self._file)

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` read into a new uint8 array, in the order given."""
        return self._file.read(self._rows[np.asarray(indices, dtype=np.int64).reshape(-1)])

    def head(self, n: int) -> np.ndarray:
        """The first ``n`` rows (fewer if there are fewer)."""
        return self.take(np.arange(min(n, len(self))))


#: Images a data set holds: in memory, or rows of a cache on disk.
Images = np.ndarray | DiskImages


def select(images: Images, indices: np.ndarray) -> Images:
    """Rows ``indices`` of ``images``: a copy in memory, or a selection still on disk."""
    return images.subset(indices) if isinstance(images, DiskImages) else images[indices]


def head(images: Images, n: int) -> np.ndarray:
    """The first ``n`` rows of ``images``, in memory."""
    return images.head(n) if isinstance(images, DiskImages) else np.asarray(images[:n])


class _Npy:
    """An open ``.npy`` file of uint8 rows, read with ``pread``; closed when nothing refers to it."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self.fd)
        try:
            with open(path, "rb") as stream:
                if np.lib.format.read_magic(stream) != (1, 0):
                    raise ValueError("not a version 1.0 .npy file")
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
                self.offset = stream.tell()
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not an image cache ({exc})") from exc
        if dtype != np.uint8 or fortran or len(shape) != 4:
            raise DataError(f"{path}: not an image cache (dtype {dtype}, shape {shape})")
        self.shape: tuple[int, ...] = tuple(int(d) for d in shape)
        self.row_bytes = int(np.prod(self.shape[1:]))

    def read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        flat = out.reshape(len(rows), self.row_bytes)
        start = 0
        while start < len(rows):  # one read per run of consecutive rows
            stop = start + 1
            while stop < len(rows) and rows[stop] == rows[stop - 1] + 1:
                stop += 1
            offset = self.offset + int(rows[start]) * self.row_bytes
            view = flat[start:stop].data.cast("B")
            got = os.preadv(self.fd, [view], offset)
            if got != len(view):
                raise DataError(f"image cache truncated at row {rows[start]}")
            start = stop
        return out


def npy_header(shape: tuple[int, ...]) -> bytes:
    text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}"
    room = _NPY_HEADER_BYTES - len(_NPY_MAGIC) - 2
    return _NPY_MAGIC + struct.pack("<H", room) + text.ljust(room - 1).encode() + b"\n"

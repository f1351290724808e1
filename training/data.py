"""Data sets: IDX and ``.npz`` readers, the three supported data sets, and seeded stratified sampling.

Images come back as ``uint8`` arrays shaped ``(N, H, W, C)`` and labels as ``int64`` class ids. Files are read
from a local data directory laid out as in ``shared/data/README.md``; only when a data set's files are absent
does loading fall back to Keras' own downloaders (never when ``download=False``).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from service.contract import Preprocessing
from training.diskimages import Images
from training.errors import DataError, IdxFormatError

#: Used when neither ``--data-dir`` nor ``DATA_DIR`` is given: the shared data next to the checkout.
DEFAULT_DATA_DIR = Path("../shared/data")

# IDX type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


Resize = Literal["stretch", "center_crop", "digit"]


@dataclass(frozen=True)
class Dataset:
    """A loaded data set: train and test images ``(N, H, W, C)`` uint8 (in memory, or rows of a cache on
    disk), labels int64, class names, and how an uploaded image becomes this data's input."""

    name: str
    x_train: Images
    y_train: np.ndarray
    x_test: Images
    y_test: np.ndarray
    labels: tuple[str, ...]
    mirror_invariant: bool = False
    #: The ``resize`` of the ``preprocessing`` entry: ``digit`` for MNIST-style ink on a black field.
    resize: Resize = "stretch"
    #: Where the images came from, for the ``data`` entry of the metadata (image folders only).
    source: dict[str, Any] | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        h, w, c = self.x_train.shape[1:]
        return int(h), int(w), int(c)

    @property
    def preprocessing(self) -> Preprocessing:
        """The ``preprocessing`` entry of a model trained on this data: raw 0..255 pixels in."""
        height, width, channels = self.input_shape
        color = "grayscale" if channels == 1 else "rgb"
        return Preprocessing(height=height, width=width, color=color, resize=self.resize)


@dataclass(frozen=True)
class DatasetInfo:
    """What the pipeline knows about a data set before loading it."""

    name: str
    subdir: str
    files: tuple[str, ...]
    labels: tuple[str, ...]
    read: Callable[[Path], tuple[np.ndarray, ...]]
    download: Callable[[], tuple[np.ndarray, ...]]
    #: Whether a horizontally mirrored image keeps its class (true for clothes and photos, not digits).
    mirror_invariant: bool
    resize: Resize = "stretch"


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzipped or not) into an array shaped as its header says.

    Raises :class:`IdxFormatError` for a wrong magic number, a truncated file or trailing bytes.
    """
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, OSError) as exc:
        raise IdxFormatError(f"{path}: cannot read ({exc})") from exc
    if len(raw) < 4:
        raise IdxFormatError(f"{path}: truncated IDX file ({len(raw)} bytes, no complete header)")
    if raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise IdxFormatError(
            f"{path}: not an IDX file (magic 0x{raw[:4].hex()}, expected 0x0000080N, e.g. 0x00000803)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFormatError(f"{path}: truncated IDX file ({len(raw)} bytes, header needs {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    found = len(raw) - header
    if found < expected:
        raise IdxFormatError(
            f"{path}: truncated IDX file (header {shape} needs {expected} bytes, found {found})"
        )
    if found > expected:
        raise IdxFormatError(f"{path}: {found - expected} unexpected bytes after the IDX data {shape}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _read_idx_as(path: Path, ndim: int) -> np.ndarray:
    array = read_idx(path)
    if array.ndim != ndim:
        kind = "images (magic 0x00000803)" if ndim == 3 else "labels (magic 0x00000801)"
        raise IdxFormatError(f"{path}: expected IDX {kind}, found {array.ndim} dimensions")
    return array


def _read_idx_set(directory: Path) -> tuple[np.ndarray, ...]:
    arrays = []
    for split in ("train", "t10k"):
        images = _read_idx_as(directory / f"{split}-images-idx3-ubyte.gz", 3)
        labels = _read_idx_as(directory / f"{split}-labels-idx1-ubyte.gz", 1)
        if len(images) != len(labels):
            raise DataError(f"{directory}: {split} has {len(images)} images but {len(labels)} labels")
        arrays += [images, labels]
    return tuple(arrays)


def _read_cifar_npz(directory: Path) -> tuple[np.ndarray, ...]:
    path = directory / "cifar10_subset_lossless.npz"
    try:
        with np.load(path) as npz:
            return tuple(npz[key] for key in ("x_train", "y_train", "x_test", "y_test"))
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc


def _keras_download(name: str) -> Callable[[], tuple[np.ndarray, ...]]:
    def download() -> tuple[np.ndarray, ...]:
        import keras  # only here: reading local files must not pay for importing TensorFlow

        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
        return x_train, y_train, x_test, y_test

    return download


_IDX_FILES = tuple(
    f"{split}-{kind}-ubyte.gz" for split in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")
)

_FASHION_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        subdir="mnist",
        files=_IDX_FILES,
        labels=tuple(str(digit) for digit in range(10)),
        read=_read_idx_set,
        download=_keras_download("mnist"),
        mirror_invariant=False,
        resize="digit",
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        subdir="fashion-mnist",
        files=_IDX_FILES,
        labels=_FASHION_LABELS,
        read=_read_idx_set,
        download=_keras_download("fashion_mnist"),
        mirror_invariant=True,
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        subdir="cifar10",
        files=("cifar10_subset_lossless.npz",),
        labels=_CIFAR10_LABELS,
        read=_read_cifar_npz,
        download=_keras_download("cifar10"),
        mirror_invariant=True,
    ),
}


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """``--data-dir`` if given, else ``$DATA_DIR``, else :data:`DEFAULT_DATA_DIR`."""
    if data_dir is not None:
        return Path(data_dir)
    return Path(os.environ.get("DATA_DIR") or DEFAULT_DATA_DIR)


def load_dataset(name: str, data_dir: Path, *, download: bool = True) -> Dataset:
    """Load data set ``name`` from ``data_dir/<subdir>``, downloading through Keras only if files are absent.

    Raises :class:`DataError` naming the directory looked in when there are no files and no download.
    """
    info = DATASETS.get(name)
    if info is None:
        raise DataError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")
    directory = data_dir / info.subdir
    missing = [f for f in info.files if not (directory / f).is_file()]
    if not missing:
        arrays = info.read(directory)
    elif not download:
        raise DataError(
            f"no {name} data in {directory.resolve()} (missing {', '.join(missing)}); downloads are off"
        )
    else:
        try:
            arrays = info.download()
        except Exception as exc:  # Keras raises a bare Exception for network failures
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(
                f"no {name} data in {directory.resolve()} (missing {', '.join(missing)}) "
                f"and the Keras download failed: {reason}"
            ) from exc
    return _as_dataset(info, *arrays)


def _as_dataset(info: DatasetInfo, *arrays: Any) -> Dataset:
    x_train, y_train, x_test, y_test = (np.asarray(a) for a in arrays)
    if x_train.ndim == 3:  # grayscale: add the channel axis
        x_train, x_test = x_train[..., None], x_test[..., None]
    return Dataset(
        name=info.name,
        x_train=x_train.astype(np.uint8, copy=False),
        y_train=y_train.reshape(-1).astype(np.int64),
        x_test=x_test.astype(np.uint8, copy=False),
        y_test=y_test.reshape(-1).astype(np.int64),
        labels=info.labels,
        mirror_invariant=info.mirror_invariant,
        resize=info.resize,
    )


def stratified_sample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` items drawn without replacement, each class in proportion to its share of ``labels``.

    Shares are rounded by largest remainder, so the sizes add up to exactly ``n``. Returned sorted.
    """
    if not 0 <= n <= len(labels):
        raise ValueError(f"cannot sample {n} of {len(labels)} items")
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * (n / len(labels))
    sizes = np.floor(quota).astype(np.int64)
    by_remainder = np.argsort(-(quota - sizes), kind="stable")
    sizes[by_remainder[: n - int(sizes.sum())]] += 1
    picks = [
        rng.choice(np.flatnonzero(labels == c), size=int(k), replace=False)
        for c, k in zip(classes, sizes, strict=True)
    ]
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


def train_validation_split(
    labels: np.ndarray, validation_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified split of ``labels``' indices into (train, validation)."""
    rng = np.random.default_rng(seed)
    validation = stratified_sample(labels, round(len(labels) * validation_fraction), rng)
    train = np.setdiff1d(np.arange(len(labels)), validation, assume_unique=True)
    return train, validation

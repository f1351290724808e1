"""Which pixels made a prediction: model-agnostic attributions from forward passes only (numpy).

An explanation perturbs one model input ``x`` (``(H, W, C)``, as the model reads it) into many rows,
has the model score each row for one class, and turns the scores into an ``(H, W)`` attribution: how
much the class's score drops when that pixel is hidden, i.e. replaced by a *baseline* value
(:func:`baseline_value`). Positive: the pixel supports the class; negative: it speaks against it;
zero: the model does not look at it. Channels are hidden together, so the map is per pixel.

- :class:`Occlusion` (Zeiler and Fergus 2014): a ``patch x patch`` square of baseline slides over the
  image by ``stride`` pixels (the last position of each axis touches the far edge, so every pixel is
  covered); a pixel's attribution is the mean score drop of the patches covering it. Rows:
  ``ceil((H - patch) / stride + 1) x ceil((W - patch) / stride + 1)``; the map is blurred by the patch.
- :class:`Rise` (Petsiuk et al. 2018): ``masks`` random masks, each a ``(grid+1)²`` grid of cells
  kept with probability 1/2, upsampled bilinearly to cells of ``ceil(H / grid) x ceil(W / grid)``
  pixels and shifted by a random fraction of a cell; row ``i`` is ``x m_i + baseline (1 - m_i)``. A
  pixel's attribution is the least-squares slope of the score on that pixel's mask value over all
  masks, ``cov(s, m) / var(m)`` (the original RISE sums ``s m``, which adds the mean score
  everywhere; the slope is centred, in the same units as occlusion, and 0 where the model does not
  look). Rows: ``masks``; seeded, so the same request gives the same map. Noise falls as
  ``1 / sqrt(masks)``; cells, not pixels, are what it resolves.

Rows are made and scored in slices (``perturbed(start, stop)``, then ``add(start, scores)``), so a
large explanation never holds all of its rows in memory and can stop part way.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from service.contract import Preprocessing
from service.errors import InvalidInput, PayloadTooLarge

#: Share of a RISE mask's grid cells that are kept.
KEEP = 0.5
#: Finest RISE grid: cells per side (the method's published grids are 7 and 8).
MAX_GRID = 64
_BLOCK = 256  # RISE masks drawn together from one seeded generator


def baseline_value(preprocessing: Preprocessing) -> float:
    """What "hidden" means for a model: the input value of black for ``digit`` models (their inputs are
    light ink on black, so black is the absence of a digit), mid grey for photos (black would be a
    strong feature of its own)."""
    black, white = preprocessing.input_range
    return float(black) if preprocessing.resize == "digit" else (black + white) / 2.0


def default_patch(height: int, width: int) -> int:
    """The occlusion patch when the request names none: a seventh of the shorter side (4 for 28x28)."""
    return max(1, round(min(height, width) / 7))


def make_explainer(
    method: str,
    image: np.ndarray,
    baseline: float,
    *,
    patch: int | None = None,
    stride: int | None = None,
    masks: int = 1000,
    grid: int = 7,
    seed: int = 0,
    max_rows: int | None = None,
) -> Explainer:
    """The :class:`Occlusion` or :class:`Rise` for ``image``: :class:`InvalidInput` for parameters out of
    range, :class:`PayloadTooLarge` when it needs more than ``max_rows`` rows, counting the unperturbed
    input's (checked before anything of that size is made). ``patch`` defaults to
    :func:`default_patch`, ``stride`` to half the patch."""
    explainer: Explainer
    if method == "occlusion":
        size = patch if patch is not None else default_patch(*image.shape[:2])
        step = stride if stride is not None else max(1, size // 2)
        explainer = Occlusion(image, baseline, patch=size, stride=step)
    elif method == "rise":
        _check_rows(masks, max_rows)
        explainer = Rise(image, baseline, masks=masks, grid=grid, seed=seed)
    else:
        raise InvalidInput(f"unknown method {method!r}; use 'occlusion' or 'rise'")
    _check_rows(explainer.rows, max_rows)
    return explainer


def _check_rows(rows: int, max_rows: int | None) -> None:
    if max_rows is not None and rows + 1 > max_rows:
        raise PayloadTooLarge(
            f"this explanation needs {rows + 1} rows (the input and {rows} perturbed); the limit is "
            f"{max_rows} rows per explanation (SERVE_EXPLAIN_MAX_ROWS)"
        )


class Explainer(Protocol):
    """One explanation in progress: its rows in slices, their scores back, then the attribution."""

    method: str
    rows: int

    def perturbed(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop``, ``(stop - start, H, W, C)`` float32."""

    def add(self, start: int, scores: np.ndarray) -> None:
        """The class's score for rows ``start:start + len(scores)``."""

    def attribution(self, score: float) -> np.ndarray:
        """``(H, W)`` float64, once every row is scored; ``score`` is the unperturbed input's."""

    def describe(self) -> dict[str, int | float]:
        """The parameters that made the rows."""


def _starts(size: int, patch: int, stride: int) -> list[int]:
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


class Occlusion:
    """Occlusion with a sliding ``patch`` (see the module docstring)."""

    method = "occlusion"

    def __init__(self, image: np.ndarray, baseline: float, *, patch: int, stride: int) -> None:
        h, w = image.shape[:2]
        if not 1 <= patch <= min(h, w):
            raise InvalidInput(f"patch must be from 1 to {min(h, w)} for the {h}x{w} input, got {patch}")
        if not 1 <= stride <= patch:
            raise InvalidInput(f"stride must be from 1 to the patch size ({patch}), got {stride}")
        self._image, self._baseline = image.astype(np.float32, copy=False), np.float32(baseline)
        self.patch, self.stride = patch, stride
        self._ys, self._xs = _starts(h, patch, stride), _starts(w, patch, stride)
        self.rows = len(self._ys) * len(self._xs)
        self._scores: np.ndarray | None = None  # made when the first scores come back

    def _corner(self, row: int) -> tuple[int, int]:
        y, x = divmod(row, len(self._xs))
        return self._ys[y], self._xs[x]

    def perturbed(self, start: int, stop: int) -> np.ndarray:
        out = np.repeat(self._image[None], stop - start, axis=0)
        p = self.patch
        for row in range(start, stop):
            y, x = self._corner(row)
            out[row - start, y : y + p, x : x + p, :] = self._baseline
        return out

    def add(self, start: int, scores: np.ndarray) -> None:
        if self._scores is None:
            self._scores = np.full(self.rows, np.nan)
        self._scores[start : start + len(scores)] = scores

    def attribution(self, score: float) -> np.ndarray:
        if self._scores is None or np.isnan(self._scores).any():
            raise RuntimeError("attribution() before every row was scored")
        h, w = self._image.shape[:2]
        total, count, p = np.zeros((h, w)), np.zeros((h, w)), self.patch
        for row, s in enumerate(self._scores):
            y, x = self._corner(row)
            total[y : y + p, x : x + p] += score - s
            count[y : y + p, x : x + p] += 1
        return total / count

    def describe(self) -> dict[str, int | float]:
        return {"patch": self.patch, "stride": self.stride, "baseline": float(self._baseline)}


def _interpolation(cells: int, cell: int, size: int) -> np.ndarray:
    """``(size, cells + 1)``: bilinear weights of grid points ``cell`` pixels apart for each pixel."""
    source = np.arange(size) / cell
    low = np.minimum(np.floor(source).astype(int), cells)
    high = np.minimum(low + 1, cells)
    frac = source - low
    weights = np.zeros((size, cells + 1))
    np.add.at(weights, (np.arange(size), low), 1 - frac)
    np.add.at(weights, (np.arange(size), high), frac)
    return weights


class Rise:
    """RISE with ``masks`` random masks on a ``grid x grid`` cell grid (see the module docstring)."""

    method = "rise"

    def __init__(self, image: np.ndarray, baseline: float, *, masks: int, grid: int, seed: int) -> None:
        h, w = image.shape[:2]
        if masks < 2:
            raise InvalidInput(f"masks must be at least 2, got {masks}")
        if not 2 <= grid <= min(h, w, MAX_GRID):
            raise InvalidInput(
                f"grid must be from 2 to {min(h, w, MAX_GRID)} for the {h}x{w} input, got {grid}"
            )
        self._image, self._baseline = image.astype(np.float32, copy=False), np.float32(baseline)
        self.rows, self.grid, self.seed = masks, grid, seed
        self._cell = (math.ceil(h / grid), math.ceil(w / grid))
        self._rows_w = _interpolation(grid, self._cell[0], h + self._cell[0])
        self._cols_w = _interpolation(grid, self._cell[1], w + self._cell[1])
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._made: dict[int, np.ndarray] = {}
        self._sum_s, self._sum_m = 0.0, np.zeros((h, w))
        self._sum_mm, self._sum_sm = np.zeros((h, w)), np.zeros((h, w))
        self._seen = 0

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cells, row and column shifts of masks ``block * _BLOCK ...``: drawn from ``(seed, block)``, so
        any slice of masks is the same whenever it is asked for, and only two blocks are kept."""
        if block not in self._blocks:
            if len(self._blocks) >= 2:
                self._blocks.pop(next(iter(self._blocks)))
            rng = np.random.default_rng((self.seed, block))
            n, side = min(_BLOCK, self.rows - block * _BLOCK), self.grid + 1
            cells = rng.random((n, side, side)) < KEEP
            self._blocks[block] = (
                cells,
                rng.integers(0, self._cell[0], n),
                rng.integers(0, self._cell[1], n),
            )
        return self._blocks[block]

    def masks(self, start: int, stop: int) -> np.ndarray:
        """Masks ``start:stop``, ``(n, H, W)`` float64 in 0..1 (1: the pixel is kept)."""
        h, w = self._image.shape[:2]
        parts = []
        for block in range(start // _BLOCK, (stop - 1) // _BLOCK + 1):
            first = block * _BLOCK
            cells, dy, dx = self._block(block)
            lo, hi = max(start - first, 0), min(stop - first, len(cells))
            rows = self._rows_w[dy[lo:hi, None] + np.arange(h)]  # (n, H, grid+1)
            cols = self._cols_w[dx[lo:hi, None] + np.arange(w)]  # (n, W, grid+1)
            parts.append(rows @ cells[lo:hi].astype(np.float64) @ cols.transpose(0, 2, 1))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def perturbed(self, start: int, stop: int) -> np.ndarray:
        m = self.masks(start, stop)
        self._made[start] = m  # kept until its scores come back (a window of slices at a time)
        m32 = m[..., None].astype(np.float32)
        return self._image[None] * m32 + self._baseline * (1 - m32)

    def add(self, start: int, scores: np.ndarray) -> None:
        m = self._made.pop(start, None)
        if m is None or len(m) != len(scores):
            m = self.masks(start, start + len(scores))
        s = scores.astype(np.float64)
        self._sum_s += float(s.sum())
        self._sum_m += m.sum(axis=0)
        self._sum_mm += (m * m).sum(axis=0)
        self._sum_sm += np.tensordot(s, m, axes=1)
        self._seen += len(s)

    def attribution(self, score: float) -> np.ndarray:
        n = self._seen
        if n != self.rows:
            raise RuntimeError("attribution() before every row was scored")
        mean_m = self._sum_m / n
        covariance = self._sum_sm / n - (self._sum_s / n) * mean_m
        variance = self._sum_mm / n - mean_m**2
        return np.divide(covariance, variance, out=np.zeros_like(covariance), where=variance > 1e-9)

    def describe(self) -> dict[str, int | float]:
        return {"masks": self.rows, "grid": self.grid, "seed": self.seed, "baseline": float(self._baseline)}

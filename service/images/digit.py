"""The MNIST-style digit fit, for a digit drawn on a canvas or written on paper and photographed. The same
algorithm, step for step, is ``service/static/preprocess.js``; ``tests/web/vectors/`` holds inputs and
outputs both must reproduce within one grey level, so change both or neither:

1. *Pixels*: RGBA, averaged in k x k blocks (k = ceil(sqrt(pixels) / 512)) so a phone photo costs
   what a 512x512 one does. Grey is the luma ``0.299 R + 0.587 G + 0.114 B``; over a transparent border
   (mean border alpha < 128) it is the alpha channel, i.e. the strokes of a canvas drawing.
2. *Background*: a quadratic surface ``1, u, v, u², uv, v²`` fitted to a grid of about 4096 pixels by
   least squares, four times, each time leaving out pixels more than 3 sigma (1.4826 x median absolute
   residual) from the previous fit, so the ink does not count; the first fit is the border's median.
   Lighting gradients and vignetting are what it removes. Images under 16 pixels a side use the median.
3. *Polarity*, against that background: the ink is dark when the 3x3-smoothed image's darkest
   departure from it is at least as deep as its brightest, light otherwise (chalk on a blackboard, a
   white pen on a black canvas). The raw border alone misleads under a strong lighting gradient.
4. *Ink*: ``(background - grey) / background``, the fraction of light the ink takes away, so a digit
   in the shadow counts as much as one in the light (light ink: ``(grey - background) / (255 -
   background)``; both divisors at least 8). Noise sigma is the median absolute deviation of
   the ink on the sample grid; ink above ``max(median + 4 sigma, 10 % of the strongest)`` is ink.
5. *Blobs*: 8-connected components of the ink. The digit is the one with the most pixels; other
   pieces join it when they have at least 5 % of its pixels and touch the box of the pieces kept so
   far, grown by a quarter of its longer side, until no more do (a broken stroke, the bar of a 5);
   specks and stray marks farther away are dropped. No ink, ink fainter than 8 % of the background,
   or a digit under ``max(3, sqrt(h w) / 50)`` pixels is "no digit found" (400).
6. *Fit*: the kept pieces' bounding box, their ink divided by its maximum (white = 255) and everything
   else black. Pen strokes thinner than MNIST's grow inside the box (a square max filter) until stroke
   width / longer side is 0.16, width being 2 x area / boundary pixels. Then it is scaled to fit
   ``round(20/28 H) x round(20/28 W)`` keeping the aspect ratio (area
   averaging when shrinking, bilinear when enlarging), and placed in HxW with its centre of mass on
   (H/2, W/2) in pixel-index coordinates, shifted by whole pixels; ink shifted past the edge is lost.

Rounding is ``floor(x + 0.5)`` and the background and the centre of mass are quantized (to 1/1024 grey
level and 1e-6 pixel) so that both implementations take the same discrete decisions.
"""

from __future__ import annotations

import math

import numpy as np

from service.errors import InvalidInput

#: The digit algorithm works on at most about WORK_SIDE² pixels; larger images are block-averaged first.
WORK_SIDE = 512
_SAMPLES = 4096  # background fit and noise estimate: about this many pixels on a regular grid
_FIT_ROUNDS = 4
_MIN_CONTRAST = 0.08
_NOISE_SIGMAS = 4.0
_FAINT = 0.1
_PIECE = 0.05
_REACH = 0.25
_STROKE = 0.16  # MNIST's median stroke width / digit height, measured the same way, is 0.17
_MAD = 1.4826  # median absolute deviation to standard deviation, for Gaussian noise


def digit(rgba: np.ndarray, height: int = 28, width: int = 28) -> np.ndarray:
    """Steps 1-6 of the module docstring on ``rgba`` ``(h, w, 4)`` uint8: ``(height, width)`` float64
    grey levels 0..255, light ink on black. Raises :class:`InvalidInput` when there is no digit."""
    pixels = _reduce(rgba)
    h, w = pixels.shape[:2]
    border = np.ones((h, w), bool)
    border[1:-1, 1:-1] = False
    alpha = pixels[..., 3]
    if alpha[border].mean() < 128:
        grey = alpha
    else:
        luma = 0.299 * pixels[..., 0] + 0.587 * pixels[..., 1] + 0.114 * pixels[..., 2]
        grey = luma * (alpha / 255) + 255 * (1 - alpha / 255)
    rows, cols = _sample_grid(h, w)
    background = _background(grey, border, rows, cols)
    deviation = _box3(grey) - background
    if -deviation.min() >= deviation.max():
        ink = (background - grey) / np.maximum(background, 8.0)
    else:  # light ink on a dark ground
        ink = (grey - background) / np.maximum(255 - background, 8.0)
    sampled = ink[np.ix_(rows, cols)]
    centre = np.median(sampled)
    sigma = _MAD * np.median(np.abs(sampled - centre))
    strongest = ink.max()
    if strongest < _MIN_CONTRAST:
        raise InvalidInput("no digit found: the image has no ink that stands out from its background")
    kept, (top, left, bottom, right) = _digit_blobs(
        ink > max(centre + _NOISE_SIGMAS * sigma, _FAINT * strongest)
    )
    if max(bottom - top, right - left) + 1 < max(3, math.ceil(math.sqrt(h * w) / 50)):
        raise InvalidInput("no digit found: the only ink is specks too small to be a digit")
    crop = np.where(kept, ink, 0.0)[top : bottom + 1, left : right + 1]
    crop = _thicken(crop, kept[top : bottom + 1, left : right + 1])
    return _fit(crop * (255 / crop.max()), height, width)


def _reduce(rgba: np.ndarray) -> np.ndarray:
    """float64 RGBA, the mean of k x k blocks (k = ceil(sqrt(pixels) / WORK_SIDE), at most the side);
    the remainder is cut."""
    h, w = rgba.shape[:2]
    k = math.ceil(math.sqrt(h * w / WORK_SIDE**2))
    kh, kw = min(k, h), min(k, w)
    if kh == kw == 1:
        return rgba.astype(np.float64)
    cut = rgba[: h // kh * kh, : w // kw * kw]
    rows = cut[0::kh].astype(np.uint32)
    for dy in range(1, kh):  # strided slices add faster than a reduction over a reshaped axis
        rows += cut[dy::kh]
    sums = rows[:, 0::kw].copy()
    for dx in range(1, kw):
        sums += rows[:, dx::kw]
    return sums / float(kh * kw)


def _box3(a: np.ndarray) -> np.ndarray:
    """3x3 mean with edges repeated, summed left to right then top to bottom."""
    p = np.pad(a, 1, mode="edge")
    rows = p[:, :-2] + p[:, 1:-1] + p[:, 2:]
    return (rows[:-2] + rows[1:-1] + rows[2:]) / 9


def _sample_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    step = max(1, math.isqrt(h * w // _SAMPLES))
    return np.arange(0, h, step), np.arange(0, w, step)


def _background(grey: np.ndarray, border: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Step 3: the paper's brightness at every pixel, quantized to 1/1024."""
    h, w = grey.shape
    level = float(np.median(grey[border]))
    if min(h, w) < 16:
        return np.full((h, w), math.floor(level * 1024 + 0.5) / 1024)
    samples = grey[np.ix_(rows, cols)].ravel()
    v, u = np.meshgrid((2 * rows + 1) / h - 1, (2 * cols + 1) / w - 1, indexing="ij")
    basis = np.stack(
        [np.ones(u.size), u.ravel(), v.ravel(), (u * u).ravel(), (u * v).ravel(), (v * v).ravel()], 1
    )
    fit = np.full(samples.size, level)
    coef = np.array([level, 0, 0, 0, 0, 0], np.float64)
    for _ in range(_FIT_ROUNDS):
        residual = samples - fit
        sigma = max(1.0, _MAD * float(np.median(np.abs(residual))))
        keep = np.abs(residual) <= 3 * sigma
        if keep.sum() < 48:
            break
        chosen = basis[keep]
        solved = _solve(chosen.T @ chosen, chosen.T @ samples[keep])
        if solved is None:
            break
        coef = solved
        fit = basis @ coef
    u, v = ((2 * np.arange(w) + 1) / w - 1)[None, :], ((2 * np.arange(h) + 1) / h - 1)[:, None]
    c = coef
    surface = c[0] + c[1] * u + c[2] * v + c[3] * u * u + c[4] * u * v + c[5] * v * v
    return np.floor(surface * 1024 + 0.5) / 1024


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """``a x = b`` by Gaussian elimination with partial pivoting (as the JavaScript does); None when
    ``a`` is singular to working precision."""
    n = len(b)
    m = [[*map(float, row), float(rhs)] for row, rhs in zip(a, b, strict=True)]
    scale = max(abs(v) for row in m for v in row[:n])
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        if not abs(m[pivot][col]) > 1e-12 * scale:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            for c in range(col, n + 1):
                m[r][c] -= f * m[col][c]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (m[r][n] - sum(m[r][c] * x[c] for c in range(r + 1, n))) / m[r][r]
    return np.array(x)


def _digit_blobs(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Step 5: the pixels of the digit's pieces and their box (top, left, bottom, right), inclusive."""
    runs = _runs(mask)
    if runs is None:
        raise InvalidInput("no digit found: the image has no ink that stands out from its background")
    row, start, end, root = runs
    roots, label = np.unique(root, return_inverse=True)
    count = np.bincount(label, weights=end - start)
    top = row[roots]
    bottom = np.zeros(len(roots), np.int64)
    left = np.full(len(roots), mask.shape[1], np.int64)
    right = np.zeros(len(roots), np.int64)
    np.maximum.at(bottom, label, row)
    np.minimum.at(left, label, start)
    np.maximum.at(right, label, end - 1)
    best = int(np.argmax(count))  # ties: the first in raster order
    big = count >= _PIECE * count[best]
    near = np.arange(len(roots)) == best
    while True:  # pieces near the kept ones join them, until no more do
        t, lft, b, rgt = top[near].min(), left[near].min(), bottom[near].max(), right[near].max()
        reach = math.floor(_REACH * (max(b - t, rgt - lft) + 1) + 0.5)
        touching = (top <= b + reach) & (bottom >= t - reach) & (left <= rgt + reach) & (right >= lft - reach)
        grown = near | (big & touching)
        if (grown == near).all():
            break
        near = grown
    kept = np.zeros(mask.shape, bool)
    for r, s, e in zip(row[near[label]], start[near[label]], end[near[label]], strict=True):
        kept[r, s:e] = True
    return kept, (
        int(top[near].min()),
        int(left[near].min()),
        int(bottom[near].max()),
        int(right[near].max()),
    )


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Horizontal runs of ``mask`` (row, start, end exclusive) in raster order, and for each run the
    index of the first run of its 8-connected component (union-find; the smaller index is the root)."""
    h = mask.shape[0]
    edges = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    row, start = np.nonzero(edges == 1)
    end = np.nonzero(edges == -1)[1]
    if row.size == 0:
        return None
    parent = list(range(row.size))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = np.searchsorted(row, np.arange(h + 1)).tolist()
    s, e = start.tolist(), end.tolist()
    for y in range(1, h):
        i, i_end, j, j_end = first[y], first[y + 1], first[y - 1], first[y]
        while i < i_end and j < j_end:
            if s[i] <= e[j] and s[j] <= e[i]:  # overlapping or diagonally touching
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            if e[i] < e[j]:
                i += 1
            else:
                j += 1
    root = np.array([find(i) for i in range(row.size)])
    return row, start, end, root


def _thicken(crop: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Strokes thinner than MNIST's (a pen, not a marker) grown by a square max filter of radius r,
    so that stroke width / longer side reaches _STROKE; width = 2 x area / boundary pixels. The box
    stays the same: strokes on its edge grow inwards only."""
    area = int(kept.sum())
    padded = np.pad(kept, 1)
    inner = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    stroke = 2 * area / (area - int(inner.sum()))
    side = max(crop.shape)
    radius = math.floor((_STROKE * side - stroke) / 2 + 0.5)
    if radius < 1:
        return crop
    return _max_filter(_max_filter(crop, radius, 0), radius, 1)


def _max_filter(a: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Max over ``[x - radius, x + radius]`` along ``axis`` (zeros beyond the edge), in O(n log r):
    windows of 1, 2, 4, ... 2^k, then two overlapping 2^k windows make one of 2r + 1."""
    size = 2 * radius + 1
    a = np.moveaxis(a, axis, 0)
    n = a.shape[0]
    padded = np.concatenate([np.zeros((radius, *a.shape[1:])), a, np.zeros((radius, *a.shape[1:]))])
    window, span = padded, 1
    while span * 2 <= size:
        window = np.maximum(window[:-span], window[span:])
        span *= 2
    out = np.maximum(window[:n], window[size - span : size - span + n])
    return np.moveaxis(out, 0, axis)


def _fit(crop: np.ndarray, height: int, width: int) -> np.ndarray:
    """Step 6: ``crop`` scaled into the 20/28 box and placed by its centre of mass in HxW."""
    box_h, box_w = math.floor(20 / 28 * height + 0.5), math.floor(20 / 28 * width + 0.5)
    h, w = crop.shape
    scale = min(box_h / h, box_w / w)
    out_h, out_w = max(1, math.floor(h * scale + 0.5)), max(1, math.floor(w * scale + 0.5))
    scaled = _resample(_resample(crop, out_w).T, out_h).T  # rows, then columns
    ys, xs = np.mgrid[0:out_h, 0:out_w]
    mass = scaled.sum()
    com_y = math.floor((ys * scaled).sum() / mass * 1e6 + 0.5) / 1e6
    com_x = math.floor((xs * scaled).sum() / mass * 1e6 + 0.5) / 1e6
    dy, dx = math.floor(height / 2 - com_y + 0.5), math.floor(width / 2 - com_x + 0.5)
    field = np.zeros((height, width))
    y0, y1 = max(0, dy), min(height, out_h + dy)
    x0, x1 = max(0, dx), min(width, out_w + dx)
    if y0 < y1 and x0 < x1:
        field[y0:y1, x0:x1] = scaled[y0 - dy : y1 - dy, x0 - dx : x1 - dx]
    return np.clip(field, 0, 255)


def _resample(a: np.ndarray, out: int) -> np.ndarray:
    """``a`` resampled along its last axis to ``out`` samples (see :func:`_taps`); sparse, since a
    dense matrix product is slower here than the few taps each sample has."""
    index, weight = _taps(a.shape[-1], out)
    return (a[..., index] * weight).sum(axis=-1)


def _taps(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``out`` samples, the source indices and weights (summing to 1) that make it, padded
    with zero weights: the covered source interval when shrinking (area averaging), the two nearest
    source pixels when enlarging (bilinear)."""
    taps: list[list[tuple[int, float]]] = []
    step = size / out
    for o in range(out):
        if step >= 1:
            lo = o * step
            hi = lo + step
            covered = [
                (s, min(hi, s + 1) - max(lo, s)) for s in range(math.floor(lo), min(size, math.ceil(hi)))
            ]
            taps.append([(s, overlap / step) for s, overlap in covered if overlap > 0])
        else:
            centre = min(max((o + 0.5) * step - 0.5, 0), size - 1)
            s = math.floor(centre)
            taps.append([(s, 1 - (centre - s))] + ([(s + 1, centre - s)] if centre > s else []))
    width = max(len(t) for t in taps)
    index = np.zeros((out, width), np.int64)
    weight = np.zeros((out, width))
    for o, t in enumerate(taps):
        index[o, : len(t)] = [s for s, _ in t]
        weight[o, : len(t)] = [w for _, w in t]
    return index, weight

/**
 * MNIST-style preprocessing of a digit, drawn on the canvas or photographed: RGBA pixels in, the
 * model's 28x28 input out (light ink, 0..255, on black).
 *
 * This is the same algorithm, step for step, as `digit()` in `service/images/preprocess.py`, which the
 * service runs on uploaded images; that module's docstring describes the steps. Both must give the
 * same 28x28 input within one grey level on the shared vectors in `tests/web/vectors/`, so change
 * both or neither. In short:
 *
 *   1. Pixels, block-averaged to about 512x512; grey = luma, or alpha over a transparent border.
 *   2. Background: a robust quadratic surface through the paper, so lighting gradients drop out.
 *   3. Polarity against it: dark ink on light paper, or light ink on a dark ground.
 *   4. Ink = (background - grey) / background; ink above 4 noise sigmas and 10 % of the strongest.
 *   5. Blobs: the largest 8-connected piece, and pieces of 5 % of its size near it; the rest dropped.
 *   6. Bounding box, pen strokes thickened to MNIST's width, fit into 20x20 keeping the aspect
 *      ratio, centre of mass moved to (14, 14) by whole pixels.
 *
 * The module is pure (no DOM), so the page, a worker or a test can call it on any RGBA buffer.
 *
 *   import { preprocessDigit } from "/static/preprocess.js";
 *   const { data, width, height } = ctx.getImageData(0, 0, canvas.width, canvas.height);
 *   const input = preprocessDigit(data, width, height); // Float32Array(784), row-major, or null
 */

/** Side of the model input, in pixels. */
export const SIZE = 28;
/** Side of the box the digit is scaled into, in pixels (for a 28x28 input). */
export const BOX = 20;
/** The algorithm works on at most about WORK_SIDE² pixels; larger images are block-averaged first. */
export const WORK_SIDE = 512;

const SAMPLES = 4096;
const FIT_ROUNDS = 4;
const MIN_CONTRAST = 0.08;
const NOISE_SIGMAS = 4;
const FAINT = 0.1;
const PIECE = 0.05;
const REACH = 0.25;
const STROKE = 0.16;
const MAD = 1.4826;

const round = (x) => Math.floor(x + 0.5); // as the Python does; Math.round differs for negatives

/**
 * @param {Uint8ClampedArray|Uint8Array|number[]} rgba  RGBA pixels, row-major (`ImageData.data`)
 * @param {number} width
 * @param {number} height
 * @param {{outHeight?: number, outWidth?: number}} [options]  the model's input size (28x28)
 * @returns {Float32Array|null}  outHeight*outWidth intensities in 0..255 (ink 255, background 0),
 *   row-major, ready for an input of shape [1, outHeight, outWidth, 1]; `null` when there is no digit.
 */
export function preprocessDigit(rgba, width, height, { outHeight = SIZE, outWidth = SIZE } = {}) {
  if (!(width > 0 && height > 0) || rgba.length < width * height * 4) {
    throw new RangeError(`expected ${width}x${height} RGBA pixels, got ${rgba.length} values`);
  }
  const { pixels, w, h } = reduce(rgba, width, height);
  const grey = greyLevels(pixels, w, h);
  const { rows, cols } = sampleGrid(w, h);
  const background = fitBackground(grey, w, h, rows, cols);
  const n = w * h;
  // Step 3: the ink is dark when the smoothed image departs from the background deepest downwards.
  const smooth = box3(grey, w, h);
  let darkest = Infinity;
  let brightest = -Infinity;
  for (let i = 0; i < n; i++) {
    const deviation = smooth[i] - background[i];
    if (deviation < darkest) darkest = deviation;
    if (deviation > brightest) brightest = deviation;
  }
  const dark = -darkest >= brightest;
  const ink = new Float64Array(n);
  let strongest = -Infinity;
  for (let i = 0; i < n; i++) {
    ink[i] = dark
      ? (background[i] - grey[i]) / Math.max(background[i], 8.0)
      : (grey[i] - background[i]) / Math.max(255 - background[i], 8.0);
    if (ink[i] > strongest) strongest = ink[i];
  }
  const sampled = [];
  for (const y of rows) for (const x of cols) sampled.push(ink[y * w + x]);
  const centre = median(sampled);
  const sigma = MAD * median(sampled.map((s) => Math.abs(s - centre)));
  if (strongest < MIN_CONTRAST) return null;
  const threshold = Math.max(centre + NOISE_SIGMAS * sigma, FAINT * strongest);
  const mask = new Uint8Array(n);
  for (let i = 0; i < n; i++) mask[i] = ink[i] > threshold ? 1 : 0;
  const blobs = digitBlobs(mask, w, h);
  if (blobs === null) return null;
  const { kept, top, left, bottom, right } = blobs;
  if (Math.max(bottom - top, right - left) + 1 < Math.max(3, Math.ceil(Math.sqrt(w * h) / 50))) return null;
  const ch = bottom - top + 1;
  const cw = right - left + 1;
  let crop = new Float64Array(ch * cw);
  const keptCrop = new Uint8Array(ch * cw);
  for (let y = 0; y < ch; y++) {
    for (let x = 0; x < cw; x++) {
      const i = (top + y) * w + left + x;
      keptCrop[y * cw + x] = kept[i];
      crop[y * cw + x] = kept[i] ? ink[i] : 0;
    }
  }
  crop = thicken(crop, keptCrop, cw, ch);
  let max = 0;
  for (const value of crop) if (value > max) max = value;
  const gain = 255 / max;
  for (let i = 0; i < crop.length; i++) crop[i] *= gain;
  return Float32Array.from(fit(crop, cw, ch, outHeight, outWidth));
}

/** Step 1: float RGBA, the mean of k x k blocks (k = ceil(sqrt(pixels) / WORK_SIDE), at most the
 * side); the remainder is cut. */
function reduce(rgba, width, height) {
  const k = Math.ceil(Math.sqrt((height * width) / WORK_SIDE ** 2));
  const kh = Math.min(k, height);
  const kw = Math.min(k, width);
  const w = Math.floor(width / kw);
  const h = Math.floor(height / kh);
  const pixels = new Float64Array(w * h * 4);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      for (let c = 0; c < 4; c++) {
        let sum = 0;
        for (let dy = 0; dy < kh; dy++) {
          const row = (y * kh + dy) * width;
          for (let dx = 0; dx < kw; dx++) sum += rgba[4 * (row + x * kw + dx) + c];
        }
        pixels[4 * (y * w + x) + c] = sum / (kh * kw);
      }
    }
  }
  return { pixels, w, h };
}

const onBorder = (x, y, w, h) => x === 0 || y === 0 || x === w - 1 || y === h - 1;

/** Step 1: grey levels, luma (or alpha over a transparent border). */
function greyLevels(pixels, w, h) {
  const n = w * h;
  let alphaSum = 0;
  let borderCount = 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (onBorder(x, y, w, h)) {
        alphaSum += pixels[4 * (y * w + x) + 3];
        borderCount++;
      }
    }
  }
  const transparent = alphaSum / borderCount < 128;
  const grey = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const a = pixels[4 * i + 3];
    if (transparent) {
      grey[i] = a;
    } else {
      const luma = 0.299 * pixels[4 * i] + 0.587 * pixels[4 * i + 1] + 0.114 * pixels[4 * i + 2];
      grey[i] = luma * (a / 255) + 255 * (1 - a / 255);
    }
  }
  return grey;
}

function borderValues(values, w, h) {
  const out = [];
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) if (onBorder(x, y, w, h)) out.push(values[y * w + x]);
  return out;
}

/** 3x3 mean with edges repeated, summed left to right then top to bottom. */
function box3(a, w, h) {
  const rows = new Float64Array(w * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const at = y * w;
      rows[at + x] = a[at + Math.max(x - 1, 0)] + a[at + x] + a[at + Math.min(x + 1, w - 1)];
    }
  }
  const out = new Float64Array(w * h);
  for (let y = 0; y < h; y++) {
    const up = Math.max(y - 1, 0) * w;
    const down = Math.min(y + 1, h - 1) * w;
    for (let x = 0; x < w; x++) out[y * w + x] = (rows[up + x] + rows[y * w + x] + rows[down + x]) / 9;
  }
  return out;
}

function sampleGrid(w, h) {
  const step = Math.max(1, Math.floor(Math.sqrt(Math.floor((h * w) / SAMPLES))));
  const rows = [];
  const cols = [];
  for (let y = 0; y < h; y += step) rows.push(y);
  for (let x = 0; x < w; x += step) cols.push(x);
  return { rows, cols };
}

function median(values) {
  const sorted = Float64Array.from(values).sort();
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Step 3: the paper's brightness at every pixel, quantized to 1/1024. */
function fitBackground(grey, w, h, rows, cols) {
  const level = median(borderValues(grey, w, h));
  const quantize = (x) => Math.floor(x * 1024 + 0.5) / 1024;
  if (Math.min(w, h) < 16) return new Float64Array(w * h).fill(quantize(level));
  const samples = [];
  const basis = [];
  for (const y of rows) {
    const v = (2 * y + 1) / h - 1;
    for (const x of cols) {
      const u = (2 * x + 1) / w - 1;
      samples.push(grey[y * w + x]);
      basis.push([1, u, v, u * u, u * v, v * v]);
    }
  }
  let fitted = samples.map(() => level);
  let coef = [level, 0, 0, 0, 0, 0];
  for (let round = 0; round < FIT_ROUNDS; round++) {
    const residual = samples.map((s, i) => s - fitted[i]);
    const sigma = Math.max(1.0, MAD * median(residual.map(Math.abs)));
    const a = Array.from({ length: 6 }, () => new Array(6).fill(0));
    const b = new Array(6).fill(0);
    let kept = 0;
    for (let i = 0; i < samples.length; i++) {
      if (!(Math.abs(residual[i]) <= 3 * sigma)) continue;
      kept++;
      const phi = basis[i];
      for (let r = 0; r < 6; r++) {
        b[r] += phi[r] * samples[i];
        for (let c = 0; c < 6; c++) a[r][c] += phi[r] * phi[c];
      }
    }
    if (kept < 48) break;
    const solved = solve(a, b);
    if (solved === null) break;
    coef = solved;
    fitted = basis.map((phi) => phi.reduce((sum, p, j) => sum + p * coef[j], 0));
  }
  const [c0, c1, c2, c3, c4, c5] = coef;
  const out = new Float64Array(w * h);
  for (let y = 0; y < h; y++) {
    const v = (2 * y + 1) / h - 1;
    for (let x = 0; x < w; x++) {
      const u = (2 * x + 1) / w - 1;
      out[y * w + x] = quantize(c0 + c1 * u + c2 * v + c3 * u * u + c4 * u * v + c5 * v * v);
    }
  }
  return out;
}

/** `a x = b` by Gaussian elimination with partial pivoting; null when `a` is singular. */
function solve(a, b) {
  const n = b.length;
  const m = a.map((row, i) => [...row, b[i]]);
  let scale = 0;
  for (const row of a) for (const value of row) scale = Math.max(scale, Math.abs(value));
  for (let col = 0; col < n; col++) {
    let pivot = col;
    for (let r = col + 1; r < n; r++) if (Math.abs(m[r][col]) > Math.abs(m[pivot][col])) pivot = r;
    if (!(Math.abs(m[pivot][col]) > 1e-12 * scale)) return null;
    [m[col], m[pivot]] = [m[pivot], m[col]];
    for (let r = col + 1; r < n; r++) {
      const f = m[r][col] / m[col][col];
      for (let c = col; c <= n; c++) m[r][c] -= f * m[col][c];
    }
  }
  const x = new Array(n).fill(0);
  for (let r = n - 1; r >= 0; r--) {
    let sum = 0;
    for (let c = r + 1; c < n; c++) sum += m[r][c] * x[c];
    x[r] = (m[r][n] - sum) / m[r][r];
  }
  return x;
}

/**
 * Step 5: horizontal runs of the mask in raster order, joined into 8-connected components by
 * union-find (the smaller run index is the root, so components come in raster order). The digit is
 * the component with the most pixels; others of at least PIECE of its pixels join it when their box
 * touches the kept pieces' box grown by REACH of its longer side, until no more do. Returns the kept
 * pixels and their box, or null.
 */
function digitBlobs(mask, w, h) {
  const runRow = [];
  const runStart = [];
  const runEnd = [];
  const first = [];
  for (let y = 0; y < h; y++) {
    first.push(runRow.length);
    for (let x = 0; x < w; x++) {
      if (mask[y * w + x] && (x === 0 || !mask[y * w + x - 1])) {
        let end = x;
        while (end < w && mask[y * w + end]) end++;
        runRow.push(y);
        runStart.push(x);
        runEnd.push(end);
      }
    }
  }
  first.push(runRow.length);
  const runs = runRow.length;
  if (runs === 0) return null;
  const parent = Array.from({ length: runs }, (_, i) => i);
  const find = (i) => {
    while (parent[i] !== i) {
      parent[i] = parent[parent[i]];
      i = parent[i];
    }
    return i;
  };
  for (let y = 1; y < h; y++) {
    let i = first[y];
    let j = first[y - 1];
    while (i < first[y + 1] && j < first[y]) {
      if (runStart[i] <= runEnd[j] && runStart[j] <= runEnd[i]) {
        const a = find(i);
        const b = find(j);
        if (a !== b) parent[Math.max(a, b)] = Math.min(a, b);
      }
      if (runEnd[i] < runEnd[j]) i++;
      else j++;
    }
  }
  const blobs = new Map(); // root -> {count, top, bottom, left, right}, in raster order of roots
  const root = new Array(runs);
  for (let r = 0; r < runs; r++) root[r] = find(r);
  const order = [...new Set(root)].sort((a, b) => a - b);
  for (const r of order) blobs.set(r, { count: 0, top: runRow[r], bottom: 0, left: w, right: 0 });
  for (let r = 0; r < runs; r++) {
    const blob = blobs.get(root[r]);
    blob.count += runEnd[r] - runStart[r];
    blob.bottom = Math.max(blob.bottom, runRow[r]);
    blob.left = Math.min(blob.left, runStart[r]);
    blob.right = Math.max(blob.right, runEnd[r] - 1);
  }
  let best = null;
  for (const blob of blobs.values()) if (best === null || blob.count > best.count) best = blob;
  const kept = new Set([best]);
  const box = { top: best.top, left: best.left, bottom: best.bottom, right: best.right };
  for (let grew = true; grew; ) {
    // Pieces near the kept ones join them, until no more do.
    grew = false;
    const reach = round(REACH * (Math.max(box.bottom - box.top, box.right - box.left) + 1));
    const joining = [];
    for (const b of blobs.values()) {
      if (kept.has(b) || b.count < PIECE * best.count) continue;
      if (b.top <= box.bottom + reach && b.bottom >= box.top - reach && b.left <= box.right + reach && b.right >= box.left - reach) {
        joining.push(b);
      }
    }
    for (const b of joining) {
      kept.add(b);
      box.top = Math.min(box.top, b.top);
      box.left = Math.min(box.left, b.left);
      box.bottom = Math.max(box.bottom, b.bottom);
      box.right = Math.max(box.right, b.right);
      grew = true;
    }
  }
  const pixels = new Uint8Array(w * h);
  for (let r = 0; r < runs; r++) {
    if (kept.has(blobs.get(root[r]))) pixels.fill(1, runRow[r] * w + runStart[r], runRow[r] * w + runEnd[r]);
  }
  return { kept: pixels, ...box };
}

/**
 * Step 6a: strokes thinner than MNIST's (a pen, not a marker) grown by a square max filter of radius
 * r, so that stroke width / longer side reaches STROKE; width = 2 x area / boundary pixels. The box
 * stays the same: strokes on its edge grow inwards only.
 */
function thicken(crop, kept, w, h) {
  let area = 0;
  let inner = 0;
  const at = (x, y) => x >= 0 && y >= 0 && x < w && y < h && kept[y * w + x] === 1;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (!at(x, y)) continue;
      area++;
      if (at(x - 1, y) && at(x + 1, y) && at(x, y - 1) && at(x, y + 1)) inner++;
    }
  }
  const stroke = (2 * area) / (area - inner);
  const radius = round((STROKE * Math.max(w, h) - stroke) / 2);
  if (radius < 1) return crop;
  const rows = new Float64Array(w * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let m = 0;
      for (let s = Math.max(0, y - radius); s <= Math.min(h - 1, y + radius); s++) m = Math.max(m, crop[s * w + x]);
      rows[y * w + x] = m;
    }
  }
  const out = new Float64Array(w * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let m = 0;
      for (let s = Math.max(0, x - radius); s <= Math.min(w - 1, x + radius); s++) m = Math.max(m, rows[y * w + s]);
      out[y * w + x] = m;
    }
  }
  return out;
}

/** Step 6b: `crop` scaled into the 20/28 box and placed by its centre of mass in the output field. */
function fit(crop, w, h, outHeight, outWidth) {
  const boxH = round((20 / 28) * outHeight);
  const boxW = round((20 / 28) * outWidth);
  const scale = Math.min(boxH / h, boxW / w);
  const sh = Math.max(1, round(h * scale));
  const sw = Math.max(1, round(w * scale));
  const xTaps = axisTaps(w, sw);
  const yTaps = axisTaps(h, sh);
  const rows = new Float64Array(h * sw);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < sw; x++) {
      let sum = 0;
      for (const [src, weight] of xTaps[x]) sum += crop[y * w + src] * weight;
      rows[y * sw + x] = sum;
    }
  }
  const scaled = new Float64Array(sw * sh);
  let mass = 0;
  let sumX = 0;
  let sumY = 0;
  for (let y = 0; y < sh; y++) {
    for (let x = 0; x < sw; x++) {
      let sum = 0;
      for (const [src, weight] of yTaps[y]) sum += rows[src * sw + x] * weight;
      scaled[y * sw + x] = sum;
      mass += sum;
      sumX += sum * x;
      sumY += sum * y;
    }
  }
  const comY = round((sumY / mass) * 1e6) / 1e6;
  const comX = round((sumX / mass) * 1e6) / 1e6;
  const dy = round(outHeight / 2 - comY);
  const dx = round(outWidth / 2 - comX);
  const field = new Float64Array(outHeight * outWidth);
  for (let y = 0; y < sh; y++) {
    const fy = y + dy;
    if (fy < 0 || fy >= outHeight) continue;
    for (let x = 0; x < sw; x++) {
      const fx = x + dx;
      if (fx < 0 || fx >= outWidth) continue;
      field[fy * outWidth + fx] = Math.min(255, Math.max(0, scaled[y * sw + x]));
    }
  }
  return field;
}

/**
 * For each of `outSize` output pixels along one axis, the source pixels and weights (summing to 1)
 * that make it: the covered source interval when shrinking, two bilinear neighbours when enlarging.
 */
function axisTaps(inSize, outSize) {
  const taps = [];
  const step = inSize / outSize;
  for (let o = 0; o < outSize; o++) {
    const weights = [];
    if (step >= 1) {
      const start = o * step;
      const end = start + step;
      for (let s = Math.floor(start); s < Math.min(inSize, Math.ceil(end)); s++) {
        const overlap = Math.min(end, s + 1) - Math.max(start, s);
        if (overlap > 0) weights.push([s, overlap / step]);
      }
    } else {
      const centre = Math.min(Math.max((o + 0.5) * step - 0.5, 0), inSize - 1);
      const s = Math.floor(centre);
      const t = centre - s;
      weights.push([s, 1 - t]);
      if (t > 0) weights.push([s + 1, t]);
    }
    taps.push(weights);
  }
  return taps;
}

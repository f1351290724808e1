/**
 * MNIST-style preprocessing of a drawn digit: canvas pixels in, a 28x28 model input out.
 *
 * MNIST digits were made by scaling each handwritten digit, keeping its aspect ratio, to fit a
 * 20x20 box (with anti-aliasing, so edges are grey), then placing it in a 28x28 field so that its
 * centre of mass sits at the centre of the field. Ink is white (255) on black (0). A digit drawn
 * large and anywhere on a canvas has to go through the same steps, or a model trained on MNIST
 * sees something it never saw in training:
 *
 *   1. Ink: how far each pixel is from the background. Over a transparent background the ink is the
 *      alpha channel; over an opaque one it is the distance of the pixel's luminance from the mean
 *      luminance of the image border, so white-on-black and black-on-white strokes both work. The
 *      ink is stretched so its maximum is 255, and faint noise (< 10 %) is dropped.
 *   2. Bounding box of the ink; an empty image gives `null`.
 *   3. Scale the box so its longer side is 20 px, keeping the aspect ratio: area averaging when
 *      shrinking (each output pixel is the mean of the source area it covers), bilinear when
 *      enlarging a small drawing.
 *   4. Place the result in a 28x28 field so its centre of mass (in pixel-index coordinates, as
 *      MNIST's own digits have it) lands on (14, 14), shifting by whole pixels; ink shifted past
 *      the edge is clipped.
 *
 * The module is pure (no DOM), so the page, a worker or a test can call it on any RGBA buffer.
 *
 *   import { preprocessDigit } from "/static/preprocess.js";
 *   const { data, width, height } = ctx.getImageData(0, 0, canvas.width, canvas.height);
 *   const input = preprocessDigit(data, width, height); // Float32Array(784), row-major, or null
 */

/** Side of the model input, in pixels. */
export const SIZE = 28;
/** Side of the box the digit is scaled into, in pixels. */
export const BOX = 20;
/** Ink below this fraction of the strongest ink is treated as background. */
const NOISE = 0.1;

/**
 * @param {Uint8ClampedArray|Uint8Array|number[]} rgba  RGBA pixels, row-major (`ImageData.data`)
 * @param {number} width
 * @param {number} height
 * @returns {Float32Array|null}  28*28 intensities in 0..255 (ink 255, background 0), row-major,
 *   ready for an input of shape [1, 28, 28, 1]; `null` when there is no ink at all.
 */
export function preprocessDigit(rgba, width, height) {
  if (!(width > 0 && height > 0) || rgba.length < width * height * 4) {
    throw new RangeError(`expected ${width}x${height} RGBA pixels, got ${rgba.length} values`);
  }
  const ink = extractInk(rgba, width, height);
  const box = boundingBox(ink, width, height);
  if (box === null) return null;
  const scale = BOX / Math.max(box.width, box.height);
  const outWidth = Math.max(1, Math.round(box.width * scale));
  const outHeight = Math.max(1, Math.round(box.height * scale));
  const digit = resample(ink, width, box, outWidth, outHeight);
  return centreByMass(digit, outWidth, outHeight);
}

/** Step 1: ink intensity 0..255 per pixel, background 0. */
function extractInk(rgba, width, height) {
  const n = width * height;
  const ink = new Float32Array(n);
  // The border tells the background apart from the strokes: transparent, dark or light.
  let borderAlpha = 0;
  let borderLuma = 0;
  let borderCount = 0;
  for (let i = 0; i < n; i++) {
    const x = i % width;
    const y = (i - x) / width;
    if (x === 0 || y === 0 || x === width - 1 || y === height - 1) {
      borderAlpha += rgba[4 * i + 3];
      borderLuma += luma(rgba, i);
      borderCount++;
    }
  }
  const transparent = borderAlpha / borderCount < 128;
  const background = borderLuma / borderCount;
  let max = 0;
  for (let i = 0; i < n; i++) {
    const alpha = rgba[4 * i + 3];
    const value = transparent ? alpha : (Math.abs(luma(rgba, i) - background) * alpha) / 255;
    ink[i] = value;
    if (value > max) max = value;
  }
  if (max === 0) return ink;
  const gain = 255 / max;
  for (let i = 0; i < n; i++) {
    const value = ink[i] * gain;
    ink[i] = value < 255 * NOISE ? 0 : value;
  }
  return ink;
}

function luma(rgba, i) {
  return 0.299 * rgba[4 * i] + 0.587 * rgba[4 * i + 1] + 0.114 * rgba[4 * i + 2];
}

/** Step 2: the smallest rectangle holding every inked pixel, or null. */
function boundingBox(ink, width, height) {
  let left = width;
  let right = -1;
  let top = height;
  let bottom = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (ink[y * width + x] > 0) {
        if (x < left) left = x;
        if (x > right) right = x;
        if (y < top) top = y;
        if (y > bottom) bottom = y;
      }
    }
  }
  if (right < 0) return null;
  return { left, top, width: right - left + 1, height: bottom - top + 1 };
}

/** Step 3: the box of `ink` resampled to outWidth x outHeight (separable: rows, then columns). */
function resample(ink, stride, box, outWidth, outHeight) {
  const xTaps = axisTaps(box.width, outWidth);
  const yTaps = axisTaps(box.height, outHeight);
  const rows = new Float32Array(box.height * outWidth);
  for (let y = 0; y < box.height; y++) {
    const row = (box.top + y) * stride + box.left;
    for (let x = 0; x < outWidth; x++) {
      let sum = 0;
      for (const [src, weight] of xTaps[x]) sum += ink[row + src] * weight;
      rows[y * outWidth + x] = sum;
    }
  }
  const out = new Float32Array(outWidth * outHeight);
  for (let y = 0; y < outHeight; y++) {
    for (let x = 0; x < outWidth; x++) {
      let sum = 0;
      for (const [src, weight] of yTaps[y]) sum += rows[src * outWidth + x] * weight;
      out[y * outWidth + x] = sum;
    }
  }
  return out;
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

/** Step 4: `digit` pasted into the 28x28 field with its centre of mass on (14, 14), clipped. */
function centreByMass(digit, width, height) {
  let mass = 0;
  let sumX = 0;
  let sumY = 0;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const value = digit[y * width + x];
      mass += value;
      sumX += value * x;
      sumY += value * y;
    }
  }
  const shiftX = Math.round(SIZE / 2 - sumX / mass);
  const shiftY = Math.round(SIZE / 2 - sumY / mass);
  const field = new Float32Array(SIZE * SIZE);
  for (let y = 0; y < height; y++) {
    const fy = y + shiftY;
    if (fy < 0 || fy >= SIZE) continue;
    for (let x = 0; x < width; x++) {
      const fx = x + shiftX;
      if (fx < 0 || fx >= SIZE) continue;
      field[fy * SIZE + fx] = Math.min(255, Math.max(0, digit[y * width + x]));
    }
  }
  return field;
}

// The drawing pad: white strokes on a black canvas, drawn with a mouse, a finger or a pen.
// Pointer events cover all three; the canvas has `touch-action: none` so touch draws, not scrolls.

/** Stroke width as a fraction of the pad: MNIST's stroke width for a digit that fills the pad. */
const STROKE = 1 / 10;

export class DrawingPad {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {(ended: boolean) => void} onDraw  called as ink is added (false) and when a stroke ends (true)
   */
  constructor(canvas, onDraw) {
    this.canvas = canvas;
    this.onDraw = onDraw;
    this.context = canvas.getContext("2d", { willReadFrequently: true });
    this.hasInk = false;
    this.stroke = null; // {id, x, y} while a pointer is down
    canvas.addEventListener("pointerdown", (event) => this.#down(event));
    canvas.addEventListener("pointermove", (event) => this.#move(event));
    canvas.addEventListener("pointerup", (event) => this.#up(event));
    canvas.addEventListener("pointercancel", (event) => this.#up(event));
    this.clear();
  }

  clear() {
    this.context.fillStyle = "#000";
    this.context.fillRect(0, 0, this.canvas.width, this.canvas.height);
    this.hasInk = false;
  }

  /** The pad's RGBA pixels: {data, width, height}. */
  pixels() {
    return this.context.getImageData(0, 0, this.canvas.width, this.canvas.height);
  }

  #down(event) {
    if (this.stroke || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    this.canvas.setPointerCapture(event.pointerId);
    this.stroke = { id: event.pointerId, ...this.#point(event) };
    this.#lineTo(this.#point(event)); // a dot, for a tap
    this.onDraw(false);
  }

  #move(event) {
    if (!this.stroke || event.pointerId !== this.stroke.id) return;
    const events = event.getCoalescedEvents?.() ?? [];
    for (const e of events.length ? events : [event]) this.#lineTo(this.#point(e));
    this.onDraw(false);
  }

  #up(event) {
    if (!this.stroke || event.pointerId !== this.stroke.id) return;
    this.stroke = null;
    this.onDraw(true);
  }

  /** Canvas pixel coordinates of a pointer event; the canvas may be scaled by CSS. */
  #point(event) {
    const rect = this.canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) * this.canvas.width) / rect.width,
      y: ((event.clientY - rect.top) * this.canvas.height) / rect.height,
    };
  }

  #lineTo({ x, y }) {
    const c = this.context;
    c.strokeStyle = "#fff";
    c.lineWidth = this.canvas.width * STROKE;
    c.lineCap = "round";
    c.lineJoin = "round";
    c.beginPath();
    c.moveTo(this.stroke.x, this.stroke.y);
    c.lineTo(x, y);
    c.stroke();
    this.stroke.x = x;
    this.stroke.y = y;
    this.hasInk = true;
  }
}

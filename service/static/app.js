// The "try a model" page: pick a served model, draw or upload, show what the service answers.
// Talks to the service's own KServe V2 routes only; nothing is fetched from anywhere else.

import { preprocessDigit, SIZE } from "./preprocess.js";

const THROTTLE_MS = 200; // at most one prediction per this many ms while the pen moves

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"),
  modelDetails: $("model-details"),
  drawPanel: $("draw-panel"),
  pad: $("pad"),
  modelInput: $("model-input"),
  clear: $("clear"),
  dropzone: $("dropzone"),
  file: $("file"),
  preview: $("upload-preview"),
  results: $("results"),
  error: $("error"),
  topLabel: $("top-label"),
  topProbability: $("top-probability"),
  resultModel: $("result-model"),
  resultVersion: $("result-version"),
  latency: $("latency"),
  source: $("result-source"),
  bars: $("bars"),
};

/** The selected model: {name, version, input, shape, classes, labels, drawable}. */
let model = null;

// ---- talking to the service ----------------------------------------------------------------------

class ServiceError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

async function request(path, init = {}) {
  const response = await fetch(path, init);
  let body = null;
  try {
    body = await response.json();
  } catch {
    // an error page without a JSON body: the status says enough
  }
  if (!response.ok) {
    const message = body && typeof body.error === "string" ? body.error : response.statusText;
    throw new ServiceError(response.status, message, response.headers.get("Retry-After"));
  }
  return body;
}

function modelPath(m) {
  return `/v2/models/${encodeURIComponent(m.name)}/versions/${encodeURIComponent(m.version)}`;
}

/** A sentence for the alert: a friendly prefix by status, then the service's own words. */
function describeError(error) {
  if (!(error instanceof ServiceError)) {
    return `Cannot reach the service — ${error.message}`;
  }
  const prefixes = {
    400: "Bad image",
    404: "Model not found",
    413: "Image too large",
    415: "Bad image",
    429: "Model overloaded — try again",
    503: "Model not ready or overloaded — try again",
    504: "The model took too long — try again",
  };
  let text = `${prefixes[error.status] ?? `Request failed (${error.status})`}: ${error.message}`;
  if (error.retryAfter) text += ` (retry after ${error.retryAfter} s)`;
  return text;
}

function showError(error) {
  ui.error.textContent = describeError(error);
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
}

// ---- models --------------------------------------------------------------------------------------

async function loadModels() {
  let rows;
  try {
    rows = await request("/v2/repository/index", { method: "POST" });
  } catch (error) {
    ui.model.replaceChildren(new Option("No models"));
    showError(error);
    return;
  }
  const ready = rows.filter((row) => row.state === "READY");
  if (ready.length === 0) {
    ui.model.replaceChildren(new Option("No models ready"));
    showError(new ServiceError(503, "no model is loaded yet; reload the page in a moment"));
    return;
  }
  ui.model.replaceChildren(
    ...ready.map((row) => new Option(`${row.name} · v${row.version}`, `${row.name}/${row.version}`)),
  );
  ui.model.disabled = false;
  const wanted = new URLSearchParams(location.search).get("model");
  const metas = await Promise.all(ready.map((row) => fetchModel(row.name, row.version)));
  const pick =
    metas.find((m) => m && m.name === wanted) ??
    metas.find((m) => m && m.drawable && m.labels.join() === "0,1,2,3,4,5,6,7,8,9") ??
    metas.find((m) => m && m.drawable) ??
    metas.find((m) => m);
  if (pick) {
    ui.model.value = `${pick.name}/${pick.version}`;
    useModel(pick);
  }
}

const metadataCache = new Map();

async function fetchModel(name, version) {
  const key = `${name}/${version}`;
  if (!metadataCache.has(key)) {
    const m = { name, version };
    const meta = await request(modelPath(m)).catch((error) => {
      showError(error);
      return null;
    });
    if (meta === null) return null;
    const input = meta.inputs[0];
    const classes = meta.outputs[0]?.shape?.at(-1) ?? meta.parameters?.labels?.length ?? 0;
    const labels = meta.parameters?.labels ?? [];
    metadataCache.set(key, {
      ...m,
      input: input.name,
      shape: input.shape,
      classes,
      labels: Array.from({ length: classes }, (_, i) => labels[i] ?? String(i)),
      drawable: input.shape.join() === [-1, SIZE, SIZE, 1].join(),
    });
  }
  return metadataCache.get(key);
}

async function onModelChange() {
  const [name, version] = ui.model.value.split("/");
  const m = await fetchModel(name, version);
  if (m && ui.model.value === `${m.name}/${m.version}`) useModel(m);
}

function useModel(m) {
  model = m;
  clearError();
  const [, h, w, c] = m.shape;
  ui.modelDetails.textContent = `Input ${h}×${w}×${c}, ${m.classes} classes`;
  ui.drawPanel.hidden = !m.drawable;
  buildBars(m.labels);
  resetResult();
  if (m.drawable && padHasInk) predictDrawing.now();
}

// ---- results -------------------------------------------------------------------------------------

function buildBars(labels) {
  ui.bars.replaceChildren(
    ...labels.map((label) => {
      const row = document.createElement("li");
      row.className = "bar";
      row.dataset.label = label;
      row.innerHTML =
        '<span class="bar-label"></span><span class="bar-track"><span class="bar-fill"></span></span>' +
        '<span class="bar-value"></span>';
      row.querySelector(".bar-label").textContent = label;
      return row;
    }),
  );
  setBars(new Array(labels.length).fill(0));
}

function setBars(probabilities) {
  const best = probabilities.some((p) => p > 0) ? argmax(probabilities) : -1;
  [...ui.bars.children].forEach((row, i) => {
    const p = probabilities[i] ?? 0;
    const percent = formatPercent(p);
    row.querySelector(".bar-fill").style.width = `${(100 * p).toFixed(2)}%`;
    row.querySelector(".bar-value").textContent = percent;
    row.classList.toggle("best", i === best);
    row.setAttribute("aria-label", `${row.dataset.label}: ${percent}`);
  });
}

function resetResult() {
  ui.topLabel.textContent = "–";
  ui.topLabel.classList.add("empty");
  ui.topProbability.textContent = model?.drawable ? "Draw a digit or drop an image" : "Drop an image";
  ui.resultModel.textContent = model ? model.name : "–";
  ui.resultVersion.textContent = model ? model.version : "–";
  ui.latency.textContent = "–";
  ui.source.textContent = "–";
  if (model) setBars(new Array(model.labels.length).fill(0));
}

function showResult({ modelName, modelVersion, probabilities, latencyMs, source }) {
  clearError();
  const best = argmax(probabilities);
  ui.topLabel.textContent = model.labels[best] ?? String(best);
  ui.topLabel.classList.remove("empty");
  ui.topProbability.textContent = `${formatPercent(probabilities[best])} sure`;
  ui.resultModel.textContent = modelName;
  ui.resultVersion.textContent = modelVersion;
  ui.latency.textContent = `${latencyMs.toFixed(1)} ms`;
  ui.source.textContent = source;
  setBars(probabilities);
}

function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

function formatPercent(p) {
  return `${(100 * p).toFixed(p >= 0.995 || p < 0.0005 ? 0 : 1)} %`;
}

/** Marks the results busy while work is pending, so assistive tech (and tests) know to wait. */
let pendingWork = 0;
function hold() {
  pendingWork++;
  ui.results.setAttribute("aria-busy", "true");
}
function release() {
  if (--pendingWork === 0) ui.results.setAttribute("aria-busy", "false");
}
async function busy(task) {
  hold();
  try {
    return await task();
  } finally {
    release();
  }
}

// ---- drawing -------------------------------------------------------------------------------------

const pen = ui.pad.getContext("2d", { willReadFrequently: true });
const inputView = ui.modelInput.getContext("2d");
let padHasInk = false;
let stroke = null; // {id, x, y} while the pen is down

function clearPad() {
  pen.fillStyle = "#000";
  pen.fillRect(0, 0, ui.pad.width, ui.pad.height);
  inputView.fillStyle = "#000";
  inputView.fillRect(0, 0, SIZE, SIZE);
  padHasInk = false;
}

function padPoint(event) {
  const rect = ui.pad.getBoundingClientRect();
  return {
    x: ((event.clientX - rect.left) * ui.pad.width) / rect.width,
    y: ((event.clientY - rect.top) * ui.pad.height) / rect.height,
  };
}

function drawTo(point) {
  pen.strokeStyle = "#fff";
  pen.lineWidth = ui.pad.width / 10; // about MNIST's stroke width for a digit filling the pad
  pen.lineCap = "round";
  pen.lineJoin = "round";
  pen.beginPath();
  pen.moveTo(stroke.x, stroke.y);
  pen.lineTo(point.x, point.y);
  pen.stroke();
  stroke.x = point.x;
  stroke.y = point.y;
  padHasInk = true;
}

ui.pad.addEventListener("pointerdown", (event) => {
  if (stroke || (event.pointerType === "mouse" && event.button !== 0)) return;
  event.preventDefault();
  ui.pad.setPointerCapture(event.pointerId);
  stroke = { id: event.pointerId, ...padPoint(event) };
  drawTo(padPoint(event)); // a dot, for a tap
  predictDrawing.soon();
});

ui.pad.addEventListener("pointermove", (event) => {
  if (!stroke || event.pointerId !== stroke.id) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const e of events.length ? events : [event]) drawTo(padPoint(e));
  predictDrawing.soon();
});

function endStroke(event) {
  if (!stroke || event.pointerId !== stroke.id) return;
  stroke = null;
  predictDrawing.now();
}
ui.pad.addEventListener("pointerup", endStroke);
ui.pad.addEventListener("pointercancel", endStroke);

ui.clear.addEventListener("click", () => {
  clearPad();
  predictDrawing.cancel();
  clearError();
  resetResult();
});

/** Show the 28x28 model input, scaled up by CSS. */
function showModelInput(values) {
  const image = inputView.createImageData(SIZE, SIZE);
  values.forEach((v, i) => {
    image.data.set([v, v, v, 255], 4 * i);
  });
  inputView.putImageData(image, 0, 0);
}

async function sendDrawing() {
  const m = model;
  if (!m || !m.drawable || !padHasInk) return;
  const { data, width, height } = pen.getImageData(0, 0, ui.pad.width, ui.pad.height);
  const values = preprocessDigit(data, width, height);
  if (values === null) return;
  showModelInput(values);
  const body = {
    inputs: [{ name: m.input, datatype: "FP32", shape: [1, SIZE, SIZE, 1], data: Array.from(values) }],
  };
  const started = performance.now();
  try {
    const answer = await request(`${modelPath(m)}/infer`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const latencyMs = performance.now() - started;
    if (m !== model || !padHasInk) return; // the model changed or the pad was cleared meanwhile
    const output = answer.outputs.find((o) => o.name === "probabilities") ?? answer.outputs[0];
    showResult({
      modelName: answer.model_name,
      modelVersion: answer.model_version,
      probabilities: output.data,
      latencyMs,
      source: "drawing",
    });
  } catch (error) {
    if (m === model) {
      resetResult();
      showError(error);
    }
  }
}

/**
 * Runs `task` at most once per `interval` ms and never twice at once: `soon()` asks for a run within
 * the interval, `now()` for a run as early as possible (after any run in progress, which it follows).
 */
function throttled(task, interval) {
  let running = false;
  let wanted = false;
  let holding = false; // the page counts as busy from the first request until the last run ends
  let lastStart = -Infinity;
  let timer = null;
  const setHolding = (value) => {
    if (value === holding) return;
    holding = value;
    if (value) hold();
    else release();
  };
  const run = async () => {
    timer = null;
    if (running || !wanted) return;
    wanted = false;
    running = true;
    lastStart = performance.now();
    try {
      await task();
    } finally {
      running = false;
      if (wanted) schedule(0);
      else setHolding(false);
    }
  };
  const schedule = (delay) => {
    if (running) return; // run() reschedules when it finishes
    if (timer !== null) {
      if (delay > 0) return;
      clearTimeout(timer);
    }
    timer = setTimeout(run, delay);
  };
  return {
    soon() {
      wanted = true;
      setHolding(true);
      schedule(Math.max(0, lastStart + interval - performance.now()));
    },
    now() {
      wanted = true;
      setHolding(true);
      schedule(0);
    },
    cancel() {
      wanted = false;
      if (timer !== null) clearTimeout(timer);
      timer = null;
      if (!running) setHolding(false);
    },
  };
}

const predictDrawing = throttled(sendDrawing, THROTTLE_MS);

// ---- uploads -------------------------------------------------------------------------------------

async function sendFile(file) {
  const m = model;
  if (!m) return;
  const started = performance.now();
  try {
    const answer = await request(`${modelPath(m)}/classify?top_k=${Math.min(1000, Math.max(1, m.classes))}`, {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    const latencyMs = performance.now() - started;
    if (m !== model) return;
    const probabilities = new Array(m.classes).fill(0);
    for (const p of answer.predictions) probabilities[p.class_id] = p.probability;
    showPreview(file);
    showResult({
      modelName: answer.model_name,
      modelVersion: answer.model_version,
      probabilities,
      latencyMs,
      source: file.name || "uploaded image",
    });
  } catch (error) {
    if (m === model) {
      resetResult();
      showError(error);
    }
  }
}

function showPreview(file) {
  if (ui.preview.src) URL.revokeObjectURL(ui.preview.src);
  ui.preview.src = URL.createObjectURL(file);
  ui.preview.alt = `Uploaded image ${file.name}`;
  ui.preview.hidden = false;
}

ui.file.addEventListener("change", () => {
  const [file] = ui.file.files;
  if (file) busy(() => sendFile(file));
  ui.file.value = ""; // choosing the same file again should send it again
});

ui.dropzone.addEventListener("dragover", (event) => {
  event.preventDefault();
  ui.dropzone.classList.add("dragging");
});
ui.dropzone.addEventListener("dragleave", () => ui.dropzone.classList.remove("dragging"));
ui.dropzone.addEventListener("drop", (event) => {
  event.preventDefault();
  ui.dropzone.classList.remove("dragging");
  const [file] = event.dataTransfer.files;
  if (file) busy(() => sendFile(file));
});
// A file dropped anywhere else would make the browser navigate away from the page.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());

// ---- start ---------------------------------------------------------------------------------------

ui.model.addEventListener("change", () => busy(onModelChange));
clearPad();
busy(loadModels);

// The "try a model" page: pick a served model, draw a digit or upload an image, show the answer.
// Everything comes from this service's own routes; nothing is fetched from anywhere else.

import { classifyFile, describeModel, errorMessage, inferDigit, readyModels, ServiceError } from "./api.js";
import { ExplanationView } from "./explain.js";
import { FeedbackBar } from "./feedback.js";
import { DrawingPad } from "./pad.js";
import { preprocessDigit } from "./preprocess.js";
import { ResultsPanel } from "./results.js";
import { throttle } from "./throttle.js";

const THROTTLE_MS = 200; // at most one prediction per this many ms while the pen moves

const $ = (id) => document.getElementById(id);
const picker = $("model");
const results = new ResultsPanel($("results"));
const feedback = new FeedbackBar($("feedback"));
const explanation = new ExplanationView($("explanation"));
const inputView = $("model-input").getContext("2d");
const preview = $("upload-preview");

/** The selected model (see api.js describeModel), or null before one is chosen. */
let model = null;
const models = new Map(); // "name/version" -> described model

// ---- models --------------------------------------------------------------------------------------

async function loadModels() {
  let ready;
  try {
    ready = await readyModels();
  } catch (error) {
    picker.replaceChildren(new Option("No models"));
    results.showError(errorMessage(error));
    return;
  }
  if (ready.length === 0) {
    picker.replaceChildren(new Option("No models ready"));
    results.showError(errorMessage(new ServiceError(503, "no model is loaded yet; reload in a moment")));
    return;
  }
  // Described before they are listed, so the picker never shows a model it will not open on.
  const described = (await Promise.all(ready.map(lookUp))).filter(Boolean);
  picker.replaceChildren(...ready.map((m) => new Option(`${m.name} · v${m.version}`, key(m))));
  picker.disabled = false;
  // ?model=NAME picks one; otherwise the first digit model (its metadata declares digit
  // preprocessing), since that is what the canvas is for, not the first name in the list.
  const wanted = new URLSearchParams(location.search).get("model");
  const first =
    described.find((m) => m.name === wanted) ?? described.find((m) => m.takesDigits) ?? described[0];
  if (first) {
    picker.value = key(first);
    useModel(first);
  }
}

const key = (m) => `${m.name}/${m.version}`;

async function lookUp({ name, version }) {
  const k = key({ name, version });
  if (!models.has(k)) {
    try {
      models.set(k, await describeModel(name, version));
    } catch (error) {
      results.showError(errorMessage(error));
      return null;
    }
  }
  return models.get(k);
}

async function onPick() {
  const [name, version] = picker.value.split("/");
  const m = await lookUp({ name, version });
  if (m && picker.value === key(m)) useModel(m);
}

function useModel(m) {
  model = m;
  const [, height, width, channels] = m.shape;
  $("model-details").textContent = `Input ${height}×${width}×${channels}, ${m.classes} classes`;
  $("draw-panel").hidden = !m.takesDigits;
  if (m.takesDigits) {
    const { canvas } = inputView;
    [canvas.height, canvas.width] = [m.preprocessing.height, m.preprocessing.width];
    clearModelInput();
  }
  results.setModel(m);
  feedback.setModel(m);
  explanation.hide();
  if (m.takesDigits && pad.hasInk) predictDrawing.now();
}

// ---- drawing -------------------------------------------------------------------------------------

const predictDrawing = throttle(sendDrawing, THROTTLE_MS, (pending) =>
  pending ? results.hold() : results.release(),
);
const pad = new DrawingPad($("pad"), (ended) => (ended ? predictDrawing.now() : predictDrawing.soon()));

async function sendDrawing() {
  const m = model;
  if (!m?.takesDigits || !pad.hasInk) return;
  const { data, width, height } = pad.pixels();
  const { height: outHeight, width: outWidth } = m.preprocessing;
  const values = preprocessDigit(data, width, height, { outHeight, outWidth });
  if (values === null) return;
  showModelInput(values);
  const started = performance.now();
  try {
    const answer = await inferDigit(m, values);
    if (m !== model || !pad.hasInk) return; // switched model or cleared meanwhile
    results.show({ ...answer, latencyMs: performance.now() - started, source: "drawing" });
    feedback.offer(m, () => new Promise((resolve) => pad.canvas.toBlob(resolve, "image/png")));
    explanation.show(m, values);
  } catch (error) {
    if (m !== model) return;
    results.reset();
    feedback.hide();
    explanation.hide();
    results.showError(errorMessage(error));
  }
}

/** The image the model receives (grey levels, 28x28 for MNIST models), scaled up by CSS. */
function showModelInput(values) {
  const { canvas } = inputView;
  const image = inputView.createImageData(canvas.width, canvas.height);
  values.forEach((v, i) => image.data.set([v, v, v, 255], 4 * i));
  inputView.putImageData(image, 0, 0);
}

function clearModelInput() {
  inputView.fillStyle = "#000";
  inputView.fillRect(0, 0, inputView.canvas.width, inputView.canvas.height);
}

$("clear").addEventListener("click", () => {
  predictDrawing.cancel();
  pad.clear();
  clearModelInput();
  results.clearError();
  results.reset();
  feedback.hide();
  explanation.hide();
});

// ---- uploads -------------------------------------------------------------------------------------

async function sendFile(file) {
  const m = model;
  if (!m) return;
  const started = performance.now();
  try {
    const answer = await classifyFile(m, file);
    if (m !== model) return;
    showPreview(file);
    if (answer.input) showModelInput(answer.input); // what the service's preprocessing made of it
    results.show({ ...answer, latencyMs: performance.now() - started, source: file.name || "image" });
    feedback.offer(m, () => file);
    explanation.show(m, file);
  } catch (error) {
    if (m !== model) return;
    results.reset();
    feedback.hide();
    explanation.hide();
    results.showError(errorMessage(error));
  }
}

function showPreview(file) {
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.alt = `Uploaded image ${file.name}`;
  preview.hidden = false;
}

const fileInput = $("file");
fileInput.addEventListener("change", () => {
  const [file] = fileInput.files;
  if (file) results.busy(() => sendFile(file));
  fileInput.value = ""; // picking the same file again sends it again
});

const dropzone = $("dropzone");
dropzone.addEventListener("dragover", (event) => {
  event.preventDefault();
  dropzone.classList.add("dragging");
});
dropzone.addEventListener("dragleave", () => dropzone.classList.remove("dragging"));
dropzone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropzone.classList.remove("dragging");
  const [file] = event.dataTransfer.files;
  if (file) results.busy(() => sendFile(file));
});
// A file dropped anywhere else would make the browser leave the page to show it.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());

// ---- start ---------------------------------------------------------------------------------------

picker.addEventListener("change", () => results.busy(onPick));
clearModelInput();
results.busy(loadModels);

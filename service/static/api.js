// The few service routes the page uses (KServe V2 over JSON), and how their errors read to a person.

/** A non-2xx answer: the HTTP status, the service's `error` text and its Retry-After, if any. */
export class ServiceError extends Error {
  constructor(status, message, retryAfter = null) {
    super(message);
    this.name = "ServiceError";
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
    // no JSON body: the status says enough
  }
  if (!response.ok) {
    const message = typeof body?.error === "string" ? body.error : response.statusText;
    throw new ServiceError(response.status, message, response.headers.get("Retry-After"));
  }
  return body;
}

function modelPath(model) {
  return `/v2/models/${encodeURIComponent(model.name)}/versions/${encodeURIComponent(model.version)}`;
}

/** The READY rows of the repository index: [{name, version}]. */
export async function readyModels() {
  const rows = await request("/v2/repository/index", { method: "POST" });
  return rows.filter((row) => row.state === "READY").map(({ name, version }) => ({ name, version }));
}

/**
 * What the page needs to know about one served model version:
 * {name, version, input, shape, classes, labels, preprocessing, takesDigits, feedback}. `preprocessing` is the
 * model's image contract (`parameters.preprocessing`: height, width, color, input_range, resize);
 * `takesDigits` means digit-style preprocessing, which the drawing canvas feeds; `feedback` that the
 * server takes corrected labels for this model (POST .../feedback).
 */
export async function describeModel(name, version) {
  const meta = await request(modelPath({ name, version }));
  const input = meta.inputs[0];
  const labels = meta.parameters?.labels ?? [];
  const classes = meta.outputs[0]?.shape?.at(-1) ?? labels.length;
  const preprocessing = meta.parameters?.preprocessing ?? null;
  return {
    name,
    version,
    input: input.name,
    shape: input.shape,
    classes,
    labels: Array.from({ length: classes }, (_, i) => labels[i] ?? String(i)),
    preprocessing,
    takesDigits: preprocessing?.resize === "digit",
    feedback: meta.parameters?.feedback === true,
  };
}

/** Grey levels 0..255 to the model's input values (its `input_range`), one channel or three. */
function toInput(model, grey) {
  const [black, white] = model.preprocessing.input_range;
  const channels = model.shape[3];
  const data = new Array(grey.length * channels);
  grey.forEach((v, i) => data.fill(black + (v / 255) * (white - black), i * channels, (i + 1) * channels));
  return data;
}

/** The model's input values (row-major, H*W*C) back to grey levels 0..255, from the first channel. */
export function toGrey(model, input) {
  const [black, white] = model.preprocessing.input_range;
  const channels = model.shape[3];
  return Array.from({ length: input.length / channels }, (_, i) => ((input[i * channels] - black) / (white - black)) * 255);
}

/**
 * Probabilities for one digit (grey levels 0..255, the model's height x width, from preprocess.js)
 * through `/infer`. Returns {modelName, modelVersion, probabilities}.
 */
export async function inferDigit(model, grey) {
  const { height, width } = model.preprocessing;
  const shape = [1, height, width, model.shape[3]];
  const body = { inputs: [{ name: model.input, datatype: "FP32", shape, data: toInput(model, grey) }] };
  const answer = await request(`${modelPath(model)}/infer`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const output = answer.outputs.find((o) => o.name === "probabilities") ?? answer.outputs[0];
  return { modelName: answer.model_name, modelVersion: answer.model_version, probabilities: output.data };
}

/**
 * Probabilities for an image file (PNG or JPEG, as bytes) through `/classify`, which preprocesses it
 * server-side as the model's metadata declares. Returns {modelName, modelVersion, probabilities,
 * input}, where `input` is what the model received (grey levels 0..255, row-major) for digit models.
 */
export async function classifyFile(model, file) {
  const topK = Math.min(1000, Math.max(1, model.classes)); // all classes, for the chart
  const query = `top_k=${topK}${model.takesDigits ? "&return_input=true" : ""}`;
  const answer = await request(`${modelPath(model)}/classify?${query}`, {
    method: "POST",
    headers: { "Content-Type": file.type || "application/octet-stream" },
    body: file,
  });
  const probabilities = new Array(model.classes).fill(0);
  for (const p of answer.predictions) probabilities[p.class_id] = p.probability;
  const input = answer.results?.[0]?.input;
  return {
    modelName: answer.model_name,
    modelVersion: answer.model_version,
    probabilities,
    input: input ? toGrey(model, input) : null,
  };
}

/**
 * Tell the server what an image really shows: POST .../feedback?label=... with the image (a Blob) and
 * the feedback token. Returns the stored item: {id, model_name, model_version, label, predicted}.
 */
export async function sendFeedback(model, label, image, token) {
  return request(`${modelPath(model)}/feedback?label=${encodeURIComponent(label)}`, {
    method: "POST",
    headers: { "Content-Type": image.type || "application/octet-stream", Authorization: `Bearer ${token}` },
    body: image,
  });
}

const PREFIXES = {
  400: "Bad image",
  404: "Model not found",
  413: "Image too large",
  415: "Bad image",
  429: "Model overloaded — try again",
  503: "Model not ready or overloaded — try again",
  504: "The model took too long — try again",
};

/** One sentence for the alert: a plain prefix chosen by status, then the service's own words. */
export function errorMessage(error) {
  if (!(error instanceof ServiceError)) return `Cannot reach the service — ${error.message}`;
  let text = `${PREFIXES[error.status] ?? `Request failed (${error.status})`}: ${error.message}`;
  if (error.retryAfter) text += ` (retry after ${error.retryAfter} s)`;
  return text;
}

/**
 * The heat map of an explanation (POST .../explain?format=png) as an image Blob, with the class it
 * explains: {blob, label}. `body` is what was predicted: model input values (grey levels, from the
 * drawing) or an image file; `signal` aborts it (the server then stops the explanation).
 */
export async function explainHeatmap(model, body, signal) {
  let init;
  if (body instanceof Blob) {
    init = { headers: { "Content-Type": body.type || "application/octet-stream" }, body };
  } else {
    const { height, width } = model.preprocessing;
    const tensor = { name: model.input, datatype: "FP32", shape: [1, height, width, model.shape[3]] };
    const json = { inputs: [{ ...tensor, data: toInput(model, body) }] };
    init = { headers: { "Content-Type": "application/json" }, body: JSON.stringify(json) };
  }
  const response = await fetch(`${modelPath(model)}/explain?format=png`, { method: "POST", signal, ...init });
  if (!response.ok) {
    let message = response.statusText;
    try {
      message = (await response.json()).error ?? message;
    } catch {
      // no JSON body: the status says enough
    }
    throw new ServiceError(response.status, message, response.headers.get("Retry-After"));
  }
  return { blob: await response.blob(), label: response.headers.get("X-Explained-Label") ?? "" };
}

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
 * {name, version, input, shape, classes, labels, takesDigits, feedback}, where `takesDigits` means an
 * input of shape [-1, 28, 28, 1] that the drawing canvas can feed, and `feedback` that the server takes
 * corrected labels for this model (POST .../feedback).
 */
export async function describeModel(name, version) {
  const meta = await request(modelPath({ name, version }));
  const input = meta.inputs[0];
  const labels = meta.parameters?.labels ?? [];
  const classes = meta.outputs[0]?.shape?.at(-1) ?? labels.length;
  return {
    name,
    version,
    input: input.name,
    shape: input.shape,
    classes,
    labels: Array.from({ length: classes }, (_, i) => labels[i] ?? String(i)),
    takesDigits: input.shape.join() === "-1,28,28,1",
    feedback: meta.parameters?.feedback === true,
  };
}

/**
 * Probabilities for one 28x28 input (Float32Array of 784 values, 0..255) through `/infer`.
 * Returns {modelName, modelVersion, probabilities}.
 */
export async function inferDigit(model, values) {
  const body = {
    inputs: [{ name: model.input, datatype: "FP32", shape: [1, 28, 28, 1], data: Array.from(values) }],
  };
  const answer = await request(`${modelPath(model)}/infer`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const output = answer.outputs.find((o) => o.name === "probabilities") ?? answer.outputs[0];
  return { modelName: answer.model_name, modelVersion: answer.model_version, probabilities: output.data };
}

/**
 * Probabilities for an image file (PNG or JPEG, as bytes) through `/classify`, which decodes and
 * resizes it server-side. Returns {modelName, modelVersion, probabilities}.
 */
export async function classifyFile(model, file) {
  const topK = Math.min(1000, Math.max(1, model.classes)); // all classes, for the chart
  const answer = await request(`${modelPath(model)}/classify?top_k=${topK}`, {
    method: "POST",
    headers: { "Content-Type": file.type || "application/octet-stream" },
    body: file,
  });
  const probabilities = new Array(model.classes).fill(0);
  for (const p of answer.predictions) probabilities[p.class_id] = p.probability;
  return { modelName: answer.model_name, modelVersion: answer.model_version, probabilities };
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

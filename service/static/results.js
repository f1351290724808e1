// The results panel: top label, facts (model, version, latency, input), a bar per class, the alert.
// It is marked aria-busy while any request is pending, so screen readers (and tests) wait for it.

export class ResultsPanel {
  constructor(root) {
    const find = (selector) => root.querySelector(selector);
    this.root = root;
    this.alert = find("#error");
    this.topLabel = find("#top-label");
    this.topProbability = find("#top-probability");
    this.modelName = find("#result-model");
    this.modelVersion = find("#result-version");
    this.latency = find("#latency");
    this.source = find("#result-source");
    this.bars = find("#bars");
    this.model = null;
    this.pending = 0;
  }

  /** Await `task` with the panel marked busy. */
  async busy(task) {
    this.hold();
    try {
      return await task();
    } finally {
      this.release();
    }
  }

  hold() {
    this.pending++;
    this.root.setAttribute("aria-busy", "true");
  }

  release() {
    this.pending--;
    if (this.pending === 0) this.root.setAttribute("aria-busy", "false");
  }

  /** A new model: one bar per class, nothing predicted yet. */
  setModel(model) {
    this.model = model;
    this.bars.replaceChildren(...model.labels.map((label) => barRow(label)));
    this.clearError();
    this.reset();
  }

  reset() {
    const m = this.model;
    this.topLabel.textContent = "–";
    this.topLabel.classList.add("empty");
    this.topProbability.textContent = m?.takesDigits ? "Draw a digit or drop an image" : "Drop an image";
    this.modelName.textContent = m ? m.name : "–";
    this.modelVersion.textContent = m ? m.version : "–";
    this.latency.textContent = "–";
    this.source.textContent = "–";
    this.#setBars([]);
  }

  /** Show one answer: {modelName, modelVersion, probabilities, latencyMs, source}. */
  show({ modelName, modelVersion, probabilities, latencyMs, source }) {
    this.clearError();
    const best = argmax(probabilities);
    this.topLabel.textContent = this.model.labels[best] ?? String(best);
    this.topLabel.classList.remove("empty");
    this.topProbability.textContent = `${percent(probabilities[best])} sure`;
    this.modelName.textContent = modelName;
    this.modelVersion.textContent = modelVersion;
    this.latency.textContent = `${latencyMs.toFixed(1)} ms`;
    this.source.textContent = source;
    this.#setBars(probabilities);
  }

  showError(message) {
    this.alert.textContent = message;
    this.alert.hidden = false;
  }

  clearError() {
    this.alert.hidden = true;
    this.alert.textContent = "";
  }

  #setBars(probabilities) {
    const best = probabilities.length ? argmax(probabilities) : -1;
    [...this.bars.children].forEach((row, i) => {
      const p = probabilities[i] ?? 0;
      row.querySelector(".bar-fill").style.width = `${(100 * p).toFixed(2)}%`;
      row.querySelector(".bar-value").textContent = percent(p);
      row.classList.toggle("best", i === best);
      row.setAttribute("aria-label", `${row.dataset.label}: ${percent(p)}`);
    });
  }
}

function barRow(label) {
  const row = document.createElement("li");
  row.className = "bar";
  row.dataset.label = label;
  for (const part of ["bar-label", "bar-track", "bar-value"]) {
    const span = document.createElement("span");
    span.className = part;
    row.append(span);
  }
  row.querySelector(".bar-label").textContent = label;
  const fill = document.createElement("span");
  fill.className = "bar-fill";
  row.querySelector(".bar-track").append(fill);
  return row;
}

function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

function percent(p) {
  return `${(100 * p).toFixed(p >= 0.995 || p < 0.0005 ? 0 : 1)} %`;
}

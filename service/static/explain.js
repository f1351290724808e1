// "Why?": the heat map of an explanation under the prediction (docs/explain.md).

import { errorMessage, explainHeatmap } from "./api.js";

/**
 * Shows the heat map for the latest prediction. `show(model, body)` asks for a new one and aborts the
 * one in flight, so a drawing that keeps changing never queues explanations (the server stops an
 * aborted one); `hide()` clears it.
 */
export class ExplanationView {
  constructor(root) {
    this.root = root;
    this.image = root.querySelector("img");
    this.caption = root.querySelector("figcaption");
    this.controller = null;
  }

  async show(model, body) {
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    this.root.setAttribute("aria-busy", "true");
    try {
      const { blob, label } = await explainHeatmap(model, body, controller.signal);
      if (this.controller !== controller) return;
      if (this.image.src) URL.revokeObjectURL(this.image.src);
      this.image.src = URL.createObjectURL(blob);
      this.image.alt = `Heat map: the pixels that made the model answer "${label}"`;
      this.caption.textContent = `Why "${label}": red pixels speak for it, blue against it.`;
      this.root.hidden = false;
    } catch (error) {
      if (this.controller !== controller || error.name === "AbortError") return;
      this.root.hidden = false;
      this.image.removeAttribute("src");
      this.image.alt = "";
      this.caption.textContent = `No explanation: ${errorMessage(error)}`;
    } finally {
      if (this.controller === controller) this.root.setAttribute("aria-busy", "false");
    }
  }

  hide() {
    this.controller?.abort();
    this.controller = null;
    this.root.hidden = true;
  }
}

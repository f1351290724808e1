// "Wrong? It was: [one button per label]" under a prediction, for models whose server has feedback on
// (the model metadata says so: parameters.feedback). A click sends the image that was classified, with
// the chosen label, to POST .../feedback. The feedback token is asked for once and kept for the tab.

import { errorMessage, sendFeedback, ServiceError } from "./api.js";

const TOKEN_KEY = "digits-serving.feedback-token";
/** More labels than this get a list to choose from instead of a row of buttons. */
const MAX_BUTTONS = 20;

export class FeedbackBar {
  /** @param {HTMLElement} root  the #feedback element of index.html */
  constructor(root) {
    const find = (selector) => root.querySelector(selector);
    this.root = root;
    this.choices = find("#feedback-labels");
    this.tokenRow = find("#feedback-token-row");
    this.tokenInput = find("#feedback-token");
    this.status = find("#feedback-status");
    this.model = null;
    this.image = null; // () => Blob | Promise<Blob>: the image that was classified
  }

  /** A new model: its labels become the choices; nothing is offered until a prediction is shown. */
  setModel(model) {
    this.model = model;
    this.hide();
    if (!model.feedback) return;
    if (model.labels.length <= MAX_BUTTONS) {
      this.choices.replaceChildren(...model.labels.map((label) => this.#button(label, label)));
    } else {
      const list = document.createElement("select");
      list.setAttribute("aria-label", "The right label");
      list.append(...model.labels.map((label) => new Option(label, label)));
      this.choices.replaceChildren(list, this.#button("Send", null, () => list.value));
    }
  }

  /** Offer feedback on the prediction just shown; `image` returns the image that was classified. */
  offer(model, image) {
    if (model !== this.model || !model.feedback) return;
    this.image = image;
    this.tokenRow.hidden = Boolean(sessionStorage.getItem(TOKEN_KEY));
    this.status.textContent = "";
    this.root.hidden = false;
  }

  hide() {
    this.root.hidden = true;
    this.image = null;
    this.status.textContent = "";
  }

  #button(text, label, pick = () => label) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "button feedback-label";
    button.textContent = text;
    button.addEventListener("click", () => this.#send(pick()));
    return button;
  }

  async #send(label) {
    const model = this.model;
    const token = this.tokenInput.value.trim() || sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      this.tokenRow.hidden = false;
      this.tokenInput.focus();
      this.status.textContent = "Enter the feedback token first.";
      return;
    }
    if (!this.image) return;
    this.status.textContent = "Sending…";
    try {
      const stored = await sendFeedback(model, label, await this.image(), token);
      sessionStorage.setItem(TOKEN_KEY, token);
      this.tokenInput.value = "";
      this.tokenRow.hidden = true;
      this.status.textContent = `Thanks: saved as “${stored.label}” (${stored.id}) for retraining.`;
    } catch (error) {
      if (error instanceof ServiceError && (error.status === 401 || error.status === 403)) {
        sessionStorage.removeItem(TOKEN_KEY);
        this.tokenRow.hidden = false;
      }
      this.status.textContent = `Not saved. ${errorMessage(error)}`;
    }
  }
}

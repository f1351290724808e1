"""The naive baseline: what most tutorials serve. A pydantic request body, one ``session.run`` per
request, no batching, JSON in and out. Run: ``uvicorn --factory bench.naive_app:create_app``
with ``NAIVE_MODEL`` pointing at a ``model.onnx``.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel


class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferRequest(BaseModel):
    inputs: list[Tensor]


def create_app() -> FastAPI:
    session = ort.InferenceSession(os.environ["NAIVE_MODEL"], providers=["CPUExecutionProvider"])
    app = FastAPI()

    @app.post("/v2/models/{model_name}/infer")
    def infer(model_name: str, request: InferRequest) -> dict[str, object]:
        tensor = request.inputs[0]
        x = np.asarray(tensor.data, dtype=np.float32).reshape(tensor.shape)
        y = session.run(None, {tensor.name: x})[0]
        return {
            "model_name": model_name,
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": list(y.shape),
                    "data": y.ravel().tolist(),
                }
            ],
        }

    return app

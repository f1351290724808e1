"""The floor: a bare FastAPI endpoint that reads the body and answers a constant.

No parsing, no model, no batching: what one HTTP request costs a FastAPI app on this machine before it
does any work. The answer has the size and shape of the service's JSON answer for one MNIST image. Run:
``uvicorn --factory bench.floor_app:create_app``.
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

ANSWER = orjson.dumps(
    {
        "model_name": "mnist-cnn",
        "model_version": "1",
        "outputs": [
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [1, 10],
                "data": [1e-6, 2e-6, 3e-6, 0.99997, 4e-6, 5e-6, 6e-6, 7e-6, 1e-6, 2e-6],
            }
        ],
    }
)


def create_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v2/models/{model_name}/infer")
    async def infer(model_name: str, request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type="application/json")

    return app

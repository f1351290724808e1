"""The API document: what OpenAPI says beyond the routes' signatures, and the /docs page that shows it.

The infer and classify routes read their bodies themselves (JSON or binary tensors, raw or multipart
images), so their request bodies are described here by hand, loosely but truthfully: whatever breaks
these schemas is refused with a 4xx. Every non-2xx answer is documented with :class:`ErrorBody`.

``/docs`` is Swagger UI served from the ``swagger-ui-bundle-v2`` package under ``/docs/assets``, so it
works in a cluster without internet access; ReDoc, which only comes from a CDN, is not served.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import swagger_ui_bundle
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

DOCS_ASSETS = "/docs/assets"


class ErrorBody(BaseModel):
    """The body of every non-2xx answer."""

    error: str


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route answers (documented, so clients and
    schema-driven tests can rely on them)."""
    return {status: {"model": ErrorBody, "description": HTTPStatus(status).phrase} for status in statuses}


_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "examples": ["FP32", "UINT8"]},
        "parameters": {
            "type": "object",
            "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
        },
        "data": {"type": "array", "description": "Values in row-major order, flat or nested."},
    },
}
_INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "properties": {
                "timeout": {"type": "integer", "minimum": 1, "description": "Deadline in microseconds."},
                "binary_data_output": {"type": "boolean"},
            },
        },
        "inputs": {"type": "array", "minItems": 1, "items": _TENSOR},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}},
                },
            },
        },
    },
}
_BYTES = {"schema": {"type": "string", "format": "binary"}}
#: The infer body: KServe V2 JSON, or Triton's binary tensor extension (JSON header + raw tensor bytes,
#: with the header's length in ``Inference-Header-Content-Length``).
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _INFER_REQUEST}, "application/octet-stream": _BYTES},
    }
}
IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/png": _BYTES,
            "image/jpeg": _BYTES,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "string", "format": "binary"},
                            "description": "One or more images, each a part named 'file'; answered in order.",
                        }
                    },
                }
            },
        },
    }
}


INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Outputs as JSON, or binary", "content": {"application/octet-stream": _BYTES}},
    **errors(400, 404, 413, 415, 500, 503, 504),
}
CLASSIFY_RESPONSES = errors(400, 404, 413, 415, 500, 503, 504)

#: Model versions, as the routes accept them: positive integers without leading zeros, at most 18 digits.
VERSION_PATTERN = "^[1-9][0-9]{0,17}$"


def refine(app: FastAPI) -> None:
    """Make ``app``'s generated document say what the service does.

    A ``version`` parameter is a positive integer (routes take it as a string to answer 400 for
    anything else), and FastAPI's default 422 answers go: validation errors are answered 400,
    documented per route.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
                    for parameter in operation.get("parameters", []):
                        if parameter.get("name") == "version":
                            parameter["schema"] = {"type": "string", "pattern": VERSION_PATTERN}
            schemas = document.get("components", {}).get("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def install_docs(app: FastAPI) -> None:
    """Serve Swagger UI at ``/docs`` from local assets (build the app with ``docs_url=None``)."""

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon-32x32.png",
        )

    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_bundle.swagger_ui_path)), name="docs-assets")

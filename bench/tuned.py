"""App factories for the HTTP server experiment (``bench/http_servers.py``); not used by the service.

``app_gc_frozen``: the service's app, then ``gc.freeze()``. Everything alive at that point (modules,
FastAPI, pydantic, numpy, onnxruntime's Python side: tens of thousands of objects) leaves the collector's
generations, so the full collections that requests still trigger scan only what requests left behind.
"""

from __future__ import annotations

import gc

from fastapi import FastAPI

from service.server import app_from_env


def app_gc_frozen() -> FastAPI:
    app = app_from_env()
    gc.freeze()
    return app

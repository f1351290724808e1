"""App factories for the HTTP server experiment (``bench/http_servers.py``); not used by the service.

``app_gc_frozen``: the service's app, then ``gc.freeze()``. Everything alive at that point (modules,
FastAPI, pydantic, numpy, onnxruntime's Python side: tens of thousands of objects) leaves the collector's
generations, so the full collections that requests still trigger scan only what requests left behind.

``GuardedProtocol``: the HTTP protocol class ``python -m service`` runs (service/http/connection.py, with
the ``SERVE_*`` limits), for ``uvicorn --http bench.tuned:GuardedProtocol``: beside plain ``--http
httptools`` it measures what the connection limits cost on the hot path.
"""

from __future__ import annotations

import gc

from fastapi import FastAPI

from service.http.connection import ConnectionLimits, guarded_protocol
from service.server import app_from_env
from service.settings import Settings


def app_gc_frozen() -> FastAPI:
    app = app_from_env()
    gc.freeze()
    return app


def __getattr__(name: str) -> object:
    # Built on first use (uvicorn imports it by name), not when the module is imported.
    if name == "GuardedProtocol":
        return guarded_protocol(ConnectionLimits.from_settings(Settings()))
    raise AttributeError(name)

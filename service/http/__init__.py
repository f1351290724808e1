"""The HTTP transport: KServe V2 REST (JSON and binary tensors), Triton's extensions, /classify, /metrics.

A thin adapter over :mod:`service.core`: :mod:`service.http.routes` (FastAPI routes),
:mod:`service.http.dispatch` (the hot ``POST .../infer`` route answered below FastAPI's routing, inside
its middleware), :mod:`service.http.infer` (the infer exchange both answer through),
:mod:`service.http.paths` (the infer path and URL versions),
:mod:`service.http.body` (reading bodies within limits), :mod:`service.http.errors`
(the one mapping of core errors to HTTP answers) and :mod:`service.http.openapi` (the API document and
its offline /docs page).
"""

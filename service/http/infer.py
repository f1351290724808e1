"""One V2 infer exchange over HTTP: read and decode the body, call the core, encode its answer.

Both the fast path (:mod:`service.http.dispatch`) and the documented FastAPI route
(:mod:`service.http.routes`) answer through :func:`answer_infer`, so the two answer identically. The
body is decoded straight into the core's :class:`~service.core.InferRequest` (:mod:`service.http.protocol`);
the core picks the outputs and makes the deadline, the encoder writes what the core returned.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from service.core import InferenceService, InferRequest, ModelCall
from service.http.body import decode_body
from service.http.paths import MAX_ROUTING_KEY, url_version
from service.http.protocol import encode_infer_response, parse_infer_request


async def answer_infer(
    core: InferenceService,
    model: str,
    version: str | None,
    headers: Mapping[str, str],
    read: Callable[[int], Awaitable[bytes]],
) -> tuple[bytes, dict[str, str]]:
    """The response body and headers of one infer request, or a ServiceError.

    ``headers`` are the request's, lower-case; ``read(limit)`` returns the raw body or raises
    PayloadTooLarge past ``limit`` bytes. ``X-Routing-Key`` keeps a client on one version during a
    rollout's canary (``docs/rollout.md``).
    """
    key = headers.get("x-routing-key")
    routing_key = key[:MAX_ROUTING_KEY] if key else None
    async with core.call(model, url_version(version), routing_key=routing_key) as call:
        if call.trace is None:  # tracing off or this request not sampled
            response = await call.infer(await _decode(call, headers, read))
            return encode_infer_response(response)
        with call.trace.child("decode"):
            request = await _decode(call, headers, read)
        response = await call.infer(request)
        with call.trace.child("encode"):
            return encode_infer_response(response)


async def _decode(
    call: ModelCall, headers: Mapping[str, str], read: Callable[[int], Awaitable[bytes]]
) -> InferRequest:
    settings = call.settings
    body = await read(settings.max_body_bytes)
    body = decode_body(body, headers.get("content-encoding"), max_bytes=settings.max_body_bytes)
    return parse_infer_request(
        body,
        header_length=headers.get("inference-header-content-length"),
        signature=call.signature,
        max_rows=settings.max_request_rows,
    )

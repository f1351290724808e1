"""The admin token over gRPC: call metadata ``authorization: Bearer <token>``, checked as over HTTP."""

from __future__ import annotations

import hmac

import grpc

from service.errors import Forbidden, Unauthorized
from service.settings import Settings


def require(settings: Settings, context: grpc.aio.ServicerContext) -> None:
    """Raise Unauthorized / Forbidden unless the call carries the configured admin token.

    Refused outright when no token is configured; the comparison is constant-time.
    """
    token = settings.admin_token
    if token is None:
        raise Forbidden("the admin API is disabled (no SERVE_ADMIN_TOKEN configured)")
    values = [v for k, v in (context.invocation_metadata() or ()) if k == "authorization"]
    if not values:
        raise Unauthorized("missing 'authorization: Bearer <token>' metadata")
    value = values[0] if isinstance(values[0], str) else values[0].decode("latin-1")
    scheme, _, given = value.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("expected 'authorization: Bearer <token>' metadata")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Forbidden("invalid admin token")

"""The admin credentials of a gRPC call: metadata ``authorization: Bearer <token>``, as the HTTP header."""

from __future__ import annotations

import grpc


def authorization(context: grpc.aio.ServicerContext) -> str | None:
    """The call's ``authorization`` metadata (the first, if sent twice), for the core to check."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None

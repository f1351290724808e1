"""What the connection limits cost per request: uvicorn's httptools protocol beside the service's guarded one.

``python -m bench.connection_cost`` feeds the same keep-alive request (a binary infer request's headers
and body, as the hot path receives them) to each protocol class in-process, over a fake transport, with
an ASGI app that answers at once, and measures the process CPU time per request (median of ``--rounds``
alternating rounds). Only the HTTP layer runs, so the difference is the guard's own cost; whole requests
cost 200-500 us of CPU on the shared machine (docs/benchmarks.md), which ``bench/http_servers.py``
cannot resolve to a few microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from service.http.connection import ConnectionLimits, guarded_protocol
from service.settings import Settings

BODY = b"\0" * 3300  # a one-image binary infer body: JSON header and 28x28 FP32
REQUEST = (
    b"POST /v2/models/mnist-cnn/infer HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: hey/0.0.1\r\n"
    b"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: 164\r\n"
    b"Accept-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(BODY)
) + BODY


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.answered = asyncio.Event()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data).endswith(b"{}"):
            self.answered.set()

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def cost(protocol_class: type[HttpToolsProtocol], requests: int) -> float:
    """CPU microseconds per request over ``requests`` keep-alive requests on one connection."""
    config = Config(app, http=protocol_class, log_level="warning")
    config.load()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = Transport()
    protocol.connection_made(transport)
    start = time.process_time()
    for _ in range(requests):
        transport.answered.clear()
        protocol.data_received(REQUEST)
        await transport.answered.wait()
    spent = time.process_time() - start
    protocol.connection_lost(None)
    return 1e6 * spent / requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    guarded = guarded_protocol(ConnectionLimits.from_settings(Settings()))
    classes: dict[str, type[HttpToolsProtocol]] = {"httptools": HttpToolsProtocol, "guarded": guarded}
    samples: dict[str, list[float]] = {name: [] for name in classes}
    for _ in range(args.rounds):
        for name, protocol_class in classes.items():
            samples[name].append(asyncio.run(cost(protocol_class, args.requests)))
    base = statistics.median(samples["httptools"])
    for name, values in samples.items():
        median = statistics.median(values)
        print(
            f"{name:10} {median:6.2f} us/request (median of {args.rounds}; min {min(values):.2f}, "
            f"max {max(values):.2f}) {median / base:.3f}x, {median - base:+.2f} us"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""service.http.connection in process: the keep-alive clock kept by the sweep, with no timer per request."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.server import ServerState

from service.http.connection import ConnectionLimits, GuardedProtocol, guarded_protocol

REQUEST = b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\n\r\n"
GUARD_S = 5.0


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.answers = 0
        self.closed_at: float | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data).endswith(b"{}"):
            self.answers += 1

    def is_closing(self) -> bool:
        return self.closed_at is not None

    def close(self) -> None:
        if self.closed_at is None:
            self.closed_at = time.monotonic()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def connect(keep_alive: float) -> tuple[GuardedProtocol, Transport]:
    limits = ConnectionLimits(
        header_timeout_s=0.2, body_timeout_s=0.2, max_header_bytes=8192, max_connections=10
    )
    protocol_class = guarded_protocol(limits)  # a class of its own: its own sweep
    config = Config(app, http=protocol_class, log_level="warning")
    config.timeout_keep_alive = keep_alive  # type: ignore[assignment]  # seconds, a float in this test
    config.load()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def answered(protocol: GuardedProtocol, transport: Transport, count: int) -> None:
    protocol.data_received(REQUEST)
    deadline = time.monotonic() + GUARD_S
    while transport.answers < count and time.monotonic() < deadline:
        await asyncio.sleep(0.001)
    assert transport.answers == count


def test_an_idle_keep_alive_connection_is_closed_by_the_sweep_without_a_timer_per_request() -> None:
    async def main() -> None:
        protocol, transport = connect(keep_alive=0.6)
        for n in (1, 2, 3):  # requests within the keep-alive time keep the connection
            await answered(protocol, transport, n)
            assert protocol.timeout_keep_alive_task is None  # uvicorn would have armed one here
            idle_from = protocol._idle_since
            assert idle_from is not None
            await asyncio.sleep(0.15)
            assert transport.closed_at is None
        deadline = time.monotonic() + GUARD_S
        while transport.closed_at is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert transport.closed_at is not None
        # Closed after keep_alive, within one sweep interval (0.05 s here) and scheduling slack.
        assert 0.6 <= transport.closed_at - idle_from <= 0.6 + 0.05 + 1.0
        protocol.connection_lost(None)

    uvloop.run(main())


def test_a_request_begun_on_a_kept_alive_connection_is_timed_by_the_header_clock_instead() -> None:
    async def main() -> None:
        protocol, transport = connect(keep_alive=30)
        await answered(protocol, transport, 1)
        protocol.data_received(b"GET /v2/health/live HTTP/1.1\r\n")  # never finished
        started = time.monotonic()
        deadline = started + GUARD_S
        while transport.closed_at is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        # Not the 30 s keep-alive: the 0.2 s header timeout (408, then a lingering close).
        assert protocol._refused
        assert time.monotonic() - started < 0.2 + 0.05 + 0.25 + 1.5
        protocol.connection_lost(None)

    uvloop.run(main())

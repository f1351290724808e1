"""service.http.connection in process: the keep-alive clock kept by the sweep, with no timer per request."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvloop
from uvicorn.config import Config
from uvicorn.server import ServerState

from service.http import connection
from service.http.connection import ConnectionLimits, GuardedProtocol, guarded_protocol

REQUEST = b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\n\r\n"
GUARD_ROUNDS = 1000


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.answers = 0
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data).endswith(b"{}"):
            self.answers += 1

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Clock:
    """The guard's ``monotonic``, moved by the test; the sweep is called by hand after each move."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(connection, "monotonic", fake)
    return fake


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
    for _ in range(GUARD_ROUNDS):  # the app's task runs on this loop: a bound that only ends a failure
        if transport.answers == count:
            break
        await asyncio.sleep(0)
    assert transport.answers == count


def test_an_idle_keep_alive_connection_is_closed_by_the_sweep_without_a_timer_per_request(
    clock: Clock,
) -> None:
    async def main() -> None:
        protocol, transport = connect(keep_alive=0.6)
        for n in (1, 2, 3):  # requests within the keep-alive time keep the connection
            await answered(protocol, transport, n)
            assert protocol.timeout_keep_alive_task is None  # uvicorn would have armed one here
            assert protocol._idle_since == clock.now
            clock.now += 0.5
            protocol._sweep()
            assert not transport.closed
        clock.now += 0.09  # 0.59 s idle
        protocol._sweep()
        assert not transport.closed
        clock.now += 0.02  # 0.61 s idle: past keep_alive
        protocol._sweep()
        assert transport.closed
        protocol.connection_lost(None)

    uvloop.run(main())


def test_a_request_begun_on_a_kept_alive_connection_is_timed_by_the_header_clock_instead(
    clock: Clock,
) -> None:
    async def main() -> None:
        protocol, transport = connect(keep_alive=30)
        await answered(protocol, transport, 1)
        protocol.data_received(b"GET /v2/health/live HTTP/1.1\r\n")  # never finished
        clock.now += 0.19
        protocol._sweep()
        assert not protocol._refused
        clock.now += 0.02  # 0.21 s: past the 0.2 s header timeout, far from the 30 s keep-alive
        protocol._sweep()
        assert protocol._refused  # 408, then a lingering close
        protocol.connection_lost(None)

    uvloop.run(main())

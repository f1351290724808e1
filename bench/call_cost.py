"""CPU per call of the service's two listeners, in process: an HTTP binary request beside a gRPC call.

``python -m bench.call_cost`` builds the real app (``create_app``, lifespan, core, ``mnist-cnn``) with
``Batcher.submit`` answering at once, then feeds one-image infer requests, each as soon as the previous
one is answered, to

- ``http``: the service's HTTP/1.1 connection (:class:`~service.http.connection.GuardedProtocol`, so
  the request takes the direct exchange of :mod:`service.http.exchange`), a binary request as
  ``tritonclient.http`` sends it;
- ``grpc``: the native gRPC listener's connection (:mod:`service.grpc.native`), ``ModelInfer`` with raw
  contents as ``tritonclient.grpc`` sends it, with the handlers ``python -m service`` serves
  (:meth:`~service.grpc.servicer.InferenceServicer.ModelInferBytes`);
- ``grpc-messages``: the same calls with ``ModelInfer`` taking and returning protobuf messages, as it
  does with grpcio's listener or the request id wrapper on.

Each over a fake transport, so what is measured is the Python (and C) each listener and the shared core
spend on a call, in process CPU microseconds: no model, no thread hand-off, no syscalls, no client. The
targets take turns for ``--rounds`` rounds; the minimum and the median of each are printed. The gRPC
client's frames are written once by ``h2`` (HEADERS and DATA of every call, stream ids in order), so the
client costs nothing while measured. Compare the rows as ratios: absolute figures move with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.settings
import numpy as np
import uvloop
from hyperframe.frame import SettingsFrame, WindowUpdateFrame
from uvicorn.server import ServerState

from bench import hotpath
from bench.grpc_load import infer_request_bytes
from bench.protocols import grpc_frame
from service.app import create_app
from service.core import batching
from service.grpc.native import NativeGrpcServer, _Connection
from service.grpc.server import services
from service.http.connection import ConnectionLimits, guarded_protocol
from service.server import ServiceConfig
from service.settings import Settings

MODEL = "mnist-cnn"
PATH = "/inference.GRPCInferenceService/ModelInfer"
OUTPUTS = {"probabilities": np.full((1, 10), 0.1, np.float32)}


class Transport:
    """What the protocols write to: counted, and the last write kept."""

    def __init__(self) -> None:
        self.writes = 0
        self.last = b""

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.last = bytes(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def http_request(image: np.ndarray) -> bytes:
    """A binary infer request for ``image``, as ``tritonclient.http`` sends one (the body and headers of
    :func:`bench.hotpath.bodies`)."""
    body, headers = hotpath.bodies(image)["binary"]
    head = b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n" % MODEL.encode()
    head += b"Content-Type: application/octet-stream\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return head + b"\r\n" + body


def grpc_calls(image: np.ndarray, calls: int) -> tuple[bytes, list[bytes]]:
    """The client's preface, then the frames of ``calls`` unary ``ModelInfer`` calls (one stream each).

    ``h2`` writes the first three calls; the rest are the third with its stream id changed (by then every
    header is in HPACK's dynamic table, so each call's header block is the same bytes). The client's
    windows are opened in full, as a real client's, so no frame waits on flow control."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    big = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1}
    client.local_settings = h2.settings.Settings(client=True, initial_values=big)
    client.initiate_connection()
    client.increment_flow_control_window(2**31 - 1 - 65535)
    preface = client.data_to_send()
    # What the server's own settings would tell the client: it never blocks on a window or a stream cap.
    settings = SettingsFrame(0)
    settings.settings = {
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**24,
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2**31 - 1,
    }
    window = WindowUpdateFrame(0)
    window.window_increment = 2**31 - 1 - 65535
    client.receive_data(settings.serialize() + window.serialize())
    preface += client.data_to_send()
    body = grpc_frame(infer_request_bytes(MODEL, image, raw=True))
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", PATH.encode()),
        (b":authority", b"127.0.0.1:8001"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
    first = []
    for _ in range(3):
        stream = client.get_next_available_stream_id()
        client.send_headers(stream, headers)
        client.send_data(stream, body, end_stream=True)
        first.append(client.data_to_send())
    frames, at = [], 0
    while at < len(first[-1]):
        length = int.from_bytes(first[-1][at : at + 3], "big")
        frames.append(first[-1][at : at + 9 + length])
        at += 9 + length
    rest = [b"".join(f[:5] + struct.pack(">I", 2 * i + 1) + f[9:] for f in frames) for i in range(3, calls)]
    return preface, first + rest


async def measure(rounds: int, requests: int) -> dict[str, list[float]]:
    async def answer_at_once(self: object, inputs: object, *, deadline: float | None = None) -> object:
        return OUTPUTS

    submit = batching.Batcher.submit
    batching.Batcher.submit = answer_at_once  # type: ignore[assignment,method-assign]
    try:
        return await _measure(rounds, requests)
    finally:
        batching.Batcher.submit = submit  # type: ignore[method-assign]


async def _measure(rounds: int, requests: int) -> dict[str, list[float]]:
    image = np.random.default_rng(0).uniform(0, 1, (1, 28, 28, 1)).astype(np.float32)
    settings = Settings(model_repository=Path("models"), models=[MODEL], grpc_port=0)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        protocol_class = guarded_protocol(ConnectionLimits.from_settings(settings))
        config = ServiceConfig(
            app,
            http=protocol_class,
            ws="none",
            lifespan="off",
            log_level="warning",
            access_log=False,
        )
        config.load()
        http = protocol_class(config=config, server_state=ServerState(), app_state={})
        http_transport = Transport()
        http.connection_made(http_transport)  # type: ignore[arg-type]
        request = http_request(image)
        core = app.state.core
        connections = {}
        for name, wire in (("grpc", True), ("grpc-messages", False)):
            table = {
                f"/{s}/{m}": h for s, methods in services(core, wire=wire).items() for m, h in methods.items()
            }
            connection = _Connection(NativeGrpcServer(table, max_message_bytes=settings.max_body_bytes))
            transport = Transport()
            connection.connection_made(transport)  # type: ignore[arg-type]
            # Each connection its own client: a call's header block refers to HPACK's table of its connection.
            preface, frames = grpc_calls(image, requests * rounds + 200)
            connection.data_received(preface)
            connections[name] = (connection, transport, iter(frames))

        def sender(feed: Callable[[], None], transport: Transport) -> Callable[[], Awaitable[None]]:
            async def one() -> None:
                before = transport.writes
                feed()
                while transport.writes == before:
                    await asyncio.sleep(0)

            return one

        def feeder(connection: _Connection, calls: Iterator[bytes]) -> Callable[[], None]:
            return lambda: connection.data_received(next(calls))

        targets = {"http": (sender(lambda: http.data_received(request), http_transport), http_transport)}
        for name, (connection, transport, it) in connections.items():
            targets[name] = (sender(feeder(connection, it), transport), transport)
        for one, _ in targets.values():
            for _ in range(100):
                await one()
        check(targets)
        spent: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(rounds):
            for name, (one, _) in targets.items():
                start = time.process_time()
                for _ in range(requests):
                    await one()
                spent[name].append((time.process_time() - start) / requests * 1e6)
        check(targets)
        return spent


def check(targets: dict[str, tuple[Any, Transport]]) -> None:
    """Every target's last answer is a complete successful one."""
    http = targets["http"][1].last
    if not http.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"the HTTP request was not answered 200: {http[:80]!r}")
    for name in ("grpc", "grpc-messages"):
        answer = targets[name][1].last
        if b"probabilities" not in answer:  # the answer's HEADERS, DATA and trailers go in one write
            raise RuntimeError(f"{name}: the call was not answered with the model's output: {answer[:80]!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=10000, help="calls per target per round")
    args = parser.parse_args(argv)
    os.environ.setdefault("SERVE_LOG_LEVEL", "warning")
    spent = uvloop.run(measure(args.rounds, args.requests))
    print("CPU µs per call, in process, model stubbed (minimum, median; every round in brackets):")
    for name, runs in spent.items():
        every = ", ".join(f"{r:.1f}" for r in runs)
        print(f"  {name:14} {min(runs):6.1f} {statistics.median(runs):6.1f}  [{every}]")
    http = min(spent["http"])
    print(
        f"gRPC per call / HTTP binary per request: {min(spent['grpc']) / http:.2f}x of the CPU "
        f"({min(spent['grpc-messages']) / http:.2f}x with protobuf messages)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

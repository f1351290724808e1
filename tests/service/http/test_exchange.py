"""service.http.exchange: infer requests answered from the parser's callbacks, on a real uvicorn server in
this process (the service's protocol class and config, a real core and model), byte for byte as the ASGI
path answers them; the requests it must leave to uvicorn's cycle; pipelining, closing and draining."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import httptools
import numpy as np
import orjson
import pytest
import uvicorn

from service.app import create_app
from service.http import connection
from service.http.connection import ConnectionLimits, GuardedProtocol, core_of, guarded_protocol
from service.http.exchange import DirectExchange, begin
from service.server import ServiceConfig
from service.settings import Settings
from tests.helpers.data import MODELS

IMAGE = np.random.default_rng(3).uniform(0, 1, (1, 28, 28, 1)).astype(np.float32)
TENSOR = {"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1]}
JSON_BODY = orjson.dumps({"inputs": [{**TENSOR, "data": IMAGE.ravel().tolist()}]})
HEAD = orjson.dumps(
    {
        "inputs": [{**TENSOR, "parameters": {"binary_data_size": IMAGE.nbytes}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
)
BINARY_BODY = HEAD + IMAGE.tobytes()
PATH = "/v2/models/mnist-cnn/infer"


def request(
    body: bytes, *, path: str = PATH, method: str = "POST", extra: dict[str, str] | None = None
) -> bytes:
    headers = {"host": "test", "content-length": str(len(body)), **(extra or {})}
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + body


def binary_request(**kwargs: Any) -> bytes:
    extra = {"inference-header-content-length": str(len(HEAD)), **kwargs.pop("extra", {})}
    return request(BINARY_BODY, extra=extra, **kwargs)


Answer = tuple[int, dict[str, str], bytes]


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
    }
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    headers.pop("date", None)  # the only header whose value depends on when
    return int(lines[0].split()[1]), headers, body


class Served:
    """The running server, and the requests its protocol answered without an ASGI cycle."""

    def __init__(self, port: int, protocol: type[GuardedProtocol], direct: list[DirectExchange]) -> None:
        self.port = port
        self.protocol = protocol
        self.direct = direct

    async def exchange(self, raw: bytes, answers: int = 1) -> list[Answer]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(raw)
            await writer.drain()
            return [await read_answer(reader) for _ in range(answers)]
        finally:
            writer.close()

    async def both_ways(self, raw: bytes) -> tuple[Answer, Answer, bool]:
        """``raw`` answered as the server answers it, then with the direct exchange off; and whether the
        first went the direct way."""
        before = len(self.direct)
        (served,) = await self.exchange(raw)
        went_direct = len(self.direct) == before + 1
        fast = self.protocol._fast
        self.protocol._fast = None
        try:
            (asgi,) = await self.exchange(raw)
        finally:
            self.protocol._fast = fast
        assert len(self.direct) == before + went_direct
        return served, asgi, went_direct


@asynccontextmanager
async def serving(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    settings = Settings(model_repository=MODELS, models=["mnist-cnn"], grpc_port=0, max_body_bytes=65536)
    protocol = guarded_protocol(ConnectionLimits.from_settings(settings))
    direct: list[DirectExchange] = []
    begin = connection.begin

    def recording(protocol: GuardedProtocol, fast: Any) -> DirectExchange | None:
        exchange = begin(protocol, fast)
        if exchange is not None:
            direct.append(exchange)
        return exchange

    monkeypatch.setattr(connection, "begin", recording)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ServiceConfig(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        http=protocol,
        ws="none",
        lifespan="on",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), task
        await asyncio.sleep(0.05)
    try:
        yield Served(port, protocol, direct)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


def run(monkeypatch: pytest.MonkeyPatch, test: Callable[[Served], Awaitable[None]]) -> None:
    async def main() -> None:
        async with serving(monkeypatch) as served:
            await test(served)

    asyncio.run(main())


def probabilities(answer: Answer) -> np.ndarray:
    status, headers, body = answer
    assert status == 200, answer
    if "inference-header-content-length" in headers:
        return np.frombuffer(body[int(headers["inference-header-content-length"]) :], np.float32)
    return np.asarray(orjson.loads(body)["outputs"][0]["data"], np.float32)


def test_plain_infer_requests_go_direct_and_answer_as_the_asgi_path(monkeypatch: pytest.MonkeyPatch) -> None:
    async def test(served: Served) -> None:
        cases = {
            "json": request(JSON_BODY),
            "binary": binary_request(),
            "versioned": request(JSON_BODY, path="/v2/models/mnist-cnn/versions/1/infer"),
            "gzip": request(gzip.compress(JSON_BODY), extra={"content-encoding": "gzip"}),
            "routing key": request(JSON_BODY, extra={"x-routing-key": "user-7"}),
            "query string": request(JSON_BODY, path=PATH + "?x=1"),
            "invalid JSON": request(b"{"),
            "wrong shape": request(JSON_BODY.replace(b"[1,28,28,1]", b"[2,28,28,1]")),
            "unknown model": request(JSON_BODY, path="/v2/models/nope/infer"),
            "unknown version": request(JSON_BODY, path="/v2/models/mnist-cnn/versions/9/infer"),
            "bad version": request(JSON_BODY, path="/v2/models/mnist-cnn/versions/x1/infer"),
            "short binary": binary_request(extra={"inference-header-content-length": "999999"}),
        }
        for name, raw in cases.items():
            served_answer, asgi_answer, went_direct = await served.both_ways(raw)
            assert went_direct, name
            assert served_answer == asgi_answer, name
        expected = probabilities((await served.exchange(request(JSON_BODY)))[0])
        assert np.allclose(probabilities((await served.exchange(binary_request()))[0]), expected)
        assert expected.shape == (10,) and abs(float(expected.sum()) - 1) < 1e-4

    run(monkeypatch, test)


def test_other_requests_take_uvicorns_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    async def test(served: Served) -> None:
        chunked = (
            f"POST {PATH} HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n"
            f"{len(JSON_BODY):x}\r\n".encode()
            + JSON_BODY
            + b"\r\n0\r\n\r\n"
        )
        cases = {
            "chunked": chunked,
            "percent-escaped path": request(JSON_BODY, path="/v2/models/mnist%2Dcnn/infer"),
            "declared over the limit": request(b"{}", extra={"content-length": "70000"}),
            "two lengths": request(JSON_BODY, extra={"Content-Length": str(len(JSON_BODY))}),
            "not infer": request(b"", method="GET", path="/v2/health/ready"),
            "HTTP/1.0 keep-alive": request(JSON_BODY, extra={"connection": "keep-alive"}).replace(
                b"HTTP/1.1", b"HTTP/1.0", 1
            ),
            "Expect": request(JSON_BODY, extra={"expect": "100-continue"}),
        }
        for name, raw in cases.items():
            if name == "two lengths":  # httptools itself refuses it: either way a 400 answers it
                (answer,) = await served.exchange(raw)
                assert answer[0] == 400, answer
                continue
            served_answer, asgi_answer, went_direct = await served.both_ways(raw)
            assert not went_direct, name
            assert served_answer == asgi_answer, name
        (over,) = await served.exchange(request(b"{}", extra={"content-length": "70000"}))
        assert over[0] == 413, over
        (chunked_answer,) = await served.exchange(chunked)
        assert np.allclose(
            probabilities(chunked_answer), probabilities((await served.exchange(request(JSON_BODY)))[0])
        )

    run(monkeypatch, test)


def test_pipelined_requests_are_answered_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    async def test(served: Served) -> None:
        health = request(b"", method="GET", path="/v2/health/ready")
        raw = request(JSON_BODY) + health + binary_request() + request(b"{") + request(JSON_BODY)
        answers = await served.exchange(raw, answers=5)
        assert [a[0] for a in answers] == [200, 200, 200, 400, 200]
        assert orjson.loads(answers[1][2]) == {"ready": True}
        assert np.allclose(probabilities(answers[0]), probabilities(answers[2]))
        assert "invalid JSON" in orjson.loads(answers[3][2])["error"]
        assert answers[4] == answers[0]

    run(monkeypatch, test)


def test_a_closing_client_and_a_draining_server_close_after_the_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def closed_after_answer(served: Served, raw: bytes) -> Answer:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        try:
            writer.write(raw)
            answer = await read_answer(reader)
            assert await asyncio.wait_for(reader.read(), 10) == b""  # the server closed the connection
            return answer
        finally:
            writer.close()

    async def test(served: Served) -> None:
        before = len(served.direct)
        answer = await closed_after_answer(served, request(JSON_BODY, extra={"connection": "close"}))
        assert answer[0] == 200 and answer[1]["connection"] == "close"
        core = core_of(served.protocol._fast) if served.protocol._fast else None
        assert core is not None
        core.lifecycle.draining = True
        try:
            answer = await closed_after_answer(served, binary_request())
        finally:
            core.lifecycle.draining = False
        # A draining core takes no new request; the answer says so and the connection closes.
        assert answer[0] == 503 and answer[1]["connection"] == "close"
        assert len(served.direct) == before + 2

    run(monkeypatch, test)


def test_a_client_gone_before_its_answer_leaves_the_server_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    async def test(served: Served) -> None:
        before = len(served.direct)
        for _ in range(20):
            _, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(request(JSON_BODY))
            await writer.drain()
            writer.transport.abort()
        (answer,) = await served.exchange(request(JSON_BODY))
        assert answer[0] == 200
        assert len(served.direct) >= before + 1

    run(monkeypatch, test)


class Parsed:
    """A connection as :func:`begin` sees it: a real httptools parser calls it, inside the header block's
    last callback as the server's protocol does (the parser's keep-alive flags are reset once the
    message ends)."""

    def __init__(self, raw: bytes, change: Callable[[Parsed], object] = lambda _: None) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.expect_100_continue = False
        self.root_path = ""
        self.cycle: Any = None
        self.pipeline: deque[Any] = deque()
        self.flow = SimpleNamespace(write_paused=False)
        self.parser = httptools.HttpRequestParser(self)
        self.began: list[DirectExchange | None] = []
        change(self)
        self.parser.feed_data(raw)
        assert len(self.began) == 1

    @property
    def exchange(self) -> DirectExchange | None:
        return self.began[0]

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))
        if name.lower() == b"expect":
            self.expect_100_continue = True

    def on_headers_complete(self) -> None:
        self.began.append(begin(self, FAST))  # type: ignore[arg-type]


FAST: Any = SimpleNamespace(core=SimpleNamespace(settings=SimpleNamespace(max_body_bytes=65536)))


def test_begin_takes_the_plain_form_only() -> None:
    exchange = Parsed(request(JSON_BODY)).exchange
    assert exchange is not None and exchange.keep_alive
    assert exchange.headers == {"content-length": str(len(JSON_BODY))}
    assert exchange.match[1] == "mnist-cnn" and exchange.match[2] is None
    versioned = Parsed(request(b"{}", path="/v2/models/m/versions/3/infer?x=1")).exchange
    assert versioned is not None and (versioned.match[1], versioned.match[2]) == ("m", "3")
    closing = Parsed(request(b"{}", extra={"connection": "close"})).exchange
    assert closing is not None and not closing.keep_alive

    for raw in (
        request(b"", method="GET", path="/v2/health/ready"),
        request(b"{}", path="/v2/models/m/metadata"),
        request(b"{}", path="/v2/models/m%2D1/infer"),
        request(b"{}", extra={"content-length": "65537"}),
        request(b"{}", extra={"expect": "100-continue"}),
        request(b"{}", extra={"x-routing-key": "a", "X-Routing-Key": "b"}),
        request(b"{}").replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        f"POST {PATH} HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n".encode(),
    ):
        assert Parsed(raw).exchange is None, raw[:80]
    for change in (
        lambda c: setattr(c.flow, "write_paused", True),  # the client is not reading its answers
        lambda c: setattr(c, "cycle", SimpleNamespace(response_complete=False)),  # one in flight
        lambda c: c.pipeline.append(object()),  # one waiting
        lambda c: setattr(c, "root_path", "/api"),
    ):
        assert Parsed(request(JSON_BODY), change).exchange is None

"""service.http.connection through the real process: raw sockets that never finish a request, oversized
header blocks, RFC 9112 framing, the connection cap under a real file-descriptor limit; and every other
client answered meanwhile."""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.server import RunningService, running_service

pytestmark = pytest.mark.slow

ENV = {
    "SERVE_MODELS": "mnist-cnn",
    "SERVE_GRPC_PORT": "0",
    "SERVE_HEADER_TIMEOUT_S": "1",
    "SERVE_BODY_TIMEOUT_S": "1",
}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    with running_service(tmp_path_factory.mktemp("connection"), env=ENV) as running:
        yield running


def connect(service: RunningService) -> socket.socket:
    return socket.create_connection(("127.0.0.1", service.port), timeout=10)


def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes (bounded by ``timeout``)."""
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def json_error(raw: bytes, status: int, words: str) -> dict[str, str]:
    code, headers, body = parse(raw)
    assert code == status, raw[:300]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    error = orjson.loads(body)
    assert words in error["error"], error
    return headers


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has answered or closed ``sock`` (an answer is followed by a close here)."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)  # b"" (closed) or the first byte of an answer
        return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)


def counter(service: RunningService, reason: str) -> float:
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "http_connections_closed":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels["reason"] == reason:
                    return sample.value
    raise AssertionError(f"no http_connections_closed_total{{reason={reason!r}}}")


# ---- framing (RFC 9112) and protocol errors as JSON --------------------------------------------------

LIVE = b"GET /v2/health/live "


@pytest.mark.parametrize(
    ("raw", "status", "words"),
    [
        (LIVE + b"HTTP/1.1\r\n\r\n", 400, "without a Host header"),
        (LIVE + b"HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "more than one Host header"),
        (LIVE + b"HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400, "more than one Host header"),
        (LIVE + b"HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP/2.0 is not supported"),
        (b"GET /v2/health/live\r\n\r\n", 400, "HTTP/0.9"),
        (b"NOT AN HTTP REQUEST\r\n\r\n", 400, "malformed HTTP request"),
        (
            b"POST /v2/models/mnist-cnn/infer HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "malformed HTTP request",
        ),
    ],
)
def test_framing_errors_are_answered_as_json_and_closed(
    service: RunningService, raw: bytes, status: int, words: str
) -> None:
    with connect(service) as sock:
        sock.sendall(raw)
        json_error(read_all(sock), status, words)


def test_http_1_0_without_host_is_served(service: RunningService) -> None:
    with connect(service) as sock:
        sock.sendall(LIVE + b"HTTP/1.0\r\n\r\n")
        code, _, body = parse(read_all(sock))
    assert (code, orjson.loads(body)) == (200, {"live": True})


def test_an_upgrade_is_answered_as_plain_http_and_the_connection_closed(service: RunningService) -> None:
    with connect(service) as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        raw = read_all(sock)  # returns only because the server closes
    json_error(raw, 404, "Not Found")


# ---- time and size of the header block and the body ---------------------------------------------------


def test_connections_that_never_finish_a_request_are_closed(service: RunningService) -> None:
    idle = [connect(service) for _ in range(30)]
    half = [connect(service) for _ in range(30)]
    for sock in half:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\n")
    slow = [connect(service) for _ in range(5)]
    stop = threading.Event()

    def drip(sock: socket.socket) -> None:  # slowloris: a header byte every 0.2 s, never the end
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        while not stop.wait(0.2):
            try:
                sock.sendall(b"a")
            except OSError:
                return

    threads = [threading.Thread(target=drip, args=(sock,), daemon=True) for sock in slow]
    for thread in threads:
        thread.start()
    try:
        answered = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(map(closed_by_server, idle + half + slow)):
            answered.append(httpx.get(f"{service.url}/v2/health/ready", timeout=5).status_code)
            time.sleep(0.1)
        assert all(map(closed_by_server, idle + half + slow)), "connections still open after 15 s"
        assert answered and set(answered) == {200}
        for sock in idle:
            assert read_all(sock) == b""  # nothing was asked: closed without an answer
        for sock in half + slow:
            json_error(read_all(sock), 408, "header block not received within 1 s")
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
        for sock in idle + half + slow:
            sock.close()
    assert counter(service, "idle_timeout") >= 30
    assert counter(service, "header_timeout") >= 35


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_header_block_over_the_limit_is_431_and_never_buffered(service: RunningService) -> None:
    before = _rss_kib(service.proc.pid)
    with connect(service) as sock:
        sent = threading.Thread(
            target=_send_quietly, args=(sock, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * (64 << 20))
        )
        sent.start()
        raw = read_all(sock)
        sent.join(15)
    json_error(raw, 431, "exceeds 32768 bytes")
    assert httpx.get(f"{service.url}/v2/health/ready", timeout=5).status_code == 200
    # Buffering a 64 MiB header would take at least that much memory; the limit holds it to 32 KiB.
    assert _rss_kib(service.proc.pid) - before < 16 * 1024


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the server answered and closed: the rest is not wanted
        sock.sendall(data)


def test_a_body_that_does_not_arrive_is_408(service: RunningService) -> None:
    with connect(service) as sock:
        sock.sendall(
            b"POST /v2/models/mnist-cnn/infer HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"inputs"'
        )
        json_error(read_all(sock), 408, "body not received within 1 s")
    assert httpx.get(f"{service.url}/v2/health/ready", timeout=5).status_code == 200


# ---- the connection cap ---------------------------------------------------------------------------------


def test_idle_connections_cannot_exhaust_the_fd_limit(tmp_path: Path) -> None:
    # 1,100 idle sockets under a 1,024 fd limit reset every new connection before; the cap (1,024 less
    # 128) closes the longest-idle one for each newcomer, and a real client keeps being answered.
    env = {**ENV, "SERVE_HEADER_TIMEOUT_S": "60"}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:  # this test's own 1,100 sockets need room
        assert hard == resource.RLIM_INFINITY or hard >= 2048, f"fd hard limit {hard} is below 2048"
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    with running_service(tmp_path, env=env, nofile=1024) as running:
        idle = []
        try:
            for _ in range(1100):
                idle.append(connect(running))
            statuses = [httpx.get(f"{running.url}/v2/health/ready", timeout=5).status_code for _ in range(5)]
            assert statuses == [200] * 5
            assert counter(running, "evicted") >= 1100 - 896
            assert running.proc.poll() is None
        finally:
            for sock in idle:
                sock.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def read_response(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """One whole answer on a connection that stays open (headers, then Content-Length bytes)."""
    sock.settimeout(timeout)
    raw = b""
    while b"\r\n\r\n" not in raw or len(raw.partition(b"\r\n\r\n")[2]) < int(
        parse(raw)[1].get("content-length", 0)
    ):
        chunk = sock.recv(65536)
        if not chunk:
            break
        raw += chunk
    return raw


def test_busy_connections_over_the_cap_are_refused_with_503(tmp_path: Path) -> None:
    env = {**ENV, "SERVE_MAX_CONNECTIONS": "4", "SERVE_BODY_TIMEOUT_S": "60"}
    with running_service(tmp_path, env=env) as running:
        busy = [connect(running) for _ in range(4)]
        try:
            for sock in busy:  # each inside a request, its body awaited: none is idle
                sock.sendall(
                    b"POST /v2/models/mnist-cnn/infer HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"
                    b"Expect: 100-continue\r\n\r\n"
                )
                # The server asks for the body once the application reads it: the request is in progress.
                assert read_response(sock).startswith(b"HTTP/1.1 100 Continue")
            with connect(running) as sock:
                sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\n\r\n")
                headers = json_error(read_all(sock), 503, "too many connections")
            assert headers["retry-after"] == "1"
            for sock in busy:  # the requests in progress complete and are answered normally
                sock.sendall(b"{}")
                code, _, body = parse(read_response(sock))
                assert code == 400, body
        finally:
            for sock in busy:
                sock.close()
        statuses = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and statuses[-1:] != [200]:
            with connect(running) as sock:  # the busy ones' closing reaches the server asynchronously
                sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                statuses.append(parse(read_all(sock))[0])
        assert statuses[-1] == 200, statuses

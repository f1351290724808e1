"""Hostile clients replayed against ``python -m service``: what each attack gets, and what it costs others.

``python -m bench.hostile`` starts the service as its own process under a 1,024 file-descriptor limit
(``prlimit``), with feedback on a 256 KiB tmpfs when run as root, then runs each case of
docs/hostile-clients.md in turn while a probe client (its own thread, one connection per request)
classifies one digit and asks ``/v2/health/ready`` in a loop. Per case it prints the answer the attack
got, the probe's median and worst latency and failures meanwhile, and the service's largest RSS while the
case ran (sampled every 20 ms from ``/proc``). Each case is bounded in time. Writes
``bench/results/hostile.json``. ``SERVE_*`` variables set for the bench reach the service (for example
``SERVE_PREPROCESS_THREADS=2``); ``--only TEXT`` runs the cases whose name contains it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from PIL import Image, ImageDraw

from bench.harness import RESULTS, first_test_image
from bench.processes import service as served_by

TOKEN = "feedback-token-for-the-bench"
ADMIN = "admin-token-for-the-bench"


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def big_digit(side: int = 4096, seed: int = 0) -> bytes:
    """A ``side`` x ``side`` PNG of a drawn digit with some noise (about 80 KB at 4096)."""
    image = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(image)
    draw.ellipse((side // 4, side // 6, 3 * side // 4, 5 * side // 6), outline=255, width=side // 20)
    pixels = np.asarray(image).copy()
    rng = np.random.default_rng(seed)
    spots = rng.integers(0, side, (2 * side, 2))
    pixels[spots[:, 0], spots[:, 1]] = 255
    return png(pixels)


def multipart(files: list[bytes], boundary: str = "bench0") -> tuple[bytes, str]:
    parts = []
    for n, data in enumerate(files):
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{n}.png"\r\n'
        parts.append(head.encode() + b"Content-Type: image/png\r\n\r\n" + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Service:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, grpc_port: int) -> None:
        self.proc, self.port, self.grpc_port = proc, port, grpc_port
        self.url = f"http://127.0.0.1:{port}"

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


class Probe:
    """Another client: one-image /classify and readiness in a loop, each on a fresh connection."""

    def __init__(self, service: Service, digit: bytes) -> None:
        self.service, self.digit = service, digit
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.rss: list[float] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop), threading.Thread(target=self._sample)]

    def _loop(self) -> None:
        url = self.service.url
        while not self._stop.is_set():
            for method, path, content in (
                ("POST", "/v2/models/mnist-cnn/classify", self.digit),
                ("GET", "/v2/health/ready", None),
            ):
                start = time.perf_counter()
                try:
                    status = httpx.request(method, url + path, content=content, timeout=30).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__  # type: ignore[assignment]
                self.latencies.append(time.perf_counter() - start)
                if status != 200:
                    self.failures.append(f"{path}: {status}")
            self._stop.wait(0.05)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError):
                self.rss.append(self.service.rss_mb())

    def __enter__(self) -> Probe:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


# ---- the cases ---------------------------------------------------------------------------------------


def wait_closed(socks: list[socket.socket], seconds: float) -> tuple[int, float, set[bytes]]:
    """(how many the server closed or answered within ``seconds``, when the last was, first status bytes)."""
    deadline = time.monotonic() + seconds
    start = time.monotonic()
    pending = {s.fileno(): s for s in socks}
    answers: set[bytes] = set()
    last = 0.0
    while pending and time.monotonic() < deadline:
        for fd, sock in list(pending.items()):
            sock.setblocking(False)
            try:
                head = sock.recv(12)
            except BlockingIOError:
                continue
            except OSError:
                head = b"reset"
            answers.add(head[9:12] if head.startswith(b"HTTP/") else head or b"EOF")
            last = time.monotonic() - start
            del pending[fd]
        time.sleep(0.05)
    return len(socks) - len(pending), last, answers


def many(service: Service, count: int, first_bytes: bytes) -> str:
    socks = []
    try:
        for _ in range(count):
            socks.append(service.connect())
            if first_bytes:
                socks[-1].sendall(first_bytes)
        closed, last, answers = wait_closed(socks, 20)
        return f"{closed}/{count} closed by {last:.1f} s: {b','.join(sorted(answers)).decode()}"
    finally:
        for sock in socks:
            sock.close()


def slowloris(service: Service, count: int = 500) -> str:
    socks = [service.connect() for _ in range(count)]
    for sock in socks:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\nX-Slow: ")
    stop = threading.Event()

    def drip() -> None:  # one byte per socket per second, for as long as the socket is open
        while not stop.wait(1.0):
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(b"a")

    dripper = threading.Thread(target=drip)
    dripper.start()
    try:
        closed, last, answers = wait_closed(socks, 20)
        return f"{closed}/{count} closed by {last:.1f} s: {b','.join(sorted(answers)).decode()}"
    finally:
        stop.set()
        dripper.join(10)
        for sock in socks:
            sock.close()


def huge_header(service: Service, megabytes: int = 200) -> str:
    with service.connect() as sock:
        payload = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * (megabytes << 20)
        sender = threading.Thread(target=_send, args=(sock, payload))
        sender.start()
        sock.settimeout(20)
        head = sock.recv(64)
        sender.join(30)
    return head.split(b"\r\n")[0].decode(errors="replace")


def _send(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)


def abandoned_classify(service: Service, images: list[bytes], requests: int) -> str:
    body, content_type = multipart(images)
    head = (
        f"POST /v2/models/mnist-cnn/classify HTTP/1.1\r\nHost: a\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    for _ in range(requests):  # sent whole, then the client leaves without reading
        with service.connect() as sock:
            sock.sendall(head + body)
    time.sleep(5)  # the probe measures meanwhile; this is a load window, not a synchronisation
    return f"{requests} x {len(body) / 1e6:.1f} MB ({len(images)} images) sent and abandoned"


def concurrent_classify(service: Service, image: bytes, count: int) -> str:
    results: list[int] = []

    def one() -> None:
        r = httpx.post(f"{service.url}/v2/models/mnist-cnn/classify", content=image, timeout=60)
        results.append(r.status_code)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    return " ".join(f"{s}x{results.count(s)}" for s in sorted(set(results)))


def baseline(service: Service) -> str:
    time.sleep(3)  # the probe alone, for comparison
    return "-"


def raw(service: Service, request: bytes) -> str:
    with service.connect() as sock:
        sock.sendall(request)
        sock.settimeout(10)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(4096):
                data += chunk
    status = data.split(b"\r\n")[0].decode(errors="replace")
    body = data.partition(b"\r\n\r\n")[2][:60].decode(errors="replace")
    return f"{status} {body}"


def long_names(service: Service) -> str:
    from service.grpc.generated import grpc_service_pb2 as pb
    from service.grpc.generated import grpc_service_pb2_grpc as pb_grpc

    name = "m" * 16384
    http = httpx.get(f"{service.url}/v2/models/{name}", timeout=10)
    with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        try:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(pb.ModelMetadataRequest(name=name))
            answer = "OK?"
        except grpc.RpcError as exc:
            answer = f"{exc.code().name} ({len(exc.details() or '')} chars)"
    return f"HTTP {http.status_code} ({len(http.json()['error'])} chars); gRPC {answer}"


def feedback_full(service: Service, digit: bytes, mounted: bool) -> str:
    if not mounted:
        return "not run: mounting a tmpfs needs root"
    url = f"{service.url}/v2/models/mnist-cnn/feedback?label=0"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    statuses: list[int] = []
    while len(statuses) < 2000 and (not statuses or statuses[-1] == 201):
        statuses.append(httpx.post(url, content=digit, headers=auth, timeout=30).status_code)
    answer = httpx.post(url, content=digit, headers=auth, timeout=30)
    return f"{statuses.count(201)} x 201, then {answer.status_code} {answer.json().get('error', '')[:30]}"


def unload_all(service: Service) -> str:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    httpx.post(f"{service.url}/v2/repository/models/mnist-cnn/unload", headers=auth, timeout=30)
    ready = httpx.get(f"{service.url}/v2/health/ready", timeout=10)
    httpx.post(f"{service.url}/v2/repository/models/mnist-cnn/load", headers=auth, timeout=60)
    return f"ready {ready.status_code} {ready.json().get('error', '')[:50]}"


# ---- the run -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(size_kib: int) -> Iterator[tuple[Path, bool]]:
    """A tmpfs of ``size_kib`` KiB when this process may mount one, else a plain directory."""
    path = Path(tempfile.mkdtemp(prefix="hostile-feedback-"))
    mounted = (
        os.geteuid() == 0
        and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)]).returncode
        == 0
    )
    try:
        yield path, mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


def hostile_cases(digit: bytes, biggest: bytes, mounted: bool) -> list[tuple[str, Callable[[Service], str]]]:
    """(name, case) in the order they run; ``mounted``: the feedback directory is a small tmpfs."""
    return [
        ("nothing (the probe alone)", baseline),
        ("2,000 idle sockets", lambda s: many(s, 2000, b"")),
        ("2,000 half-header sockets", lambda s: many(s, 2000, b"GET / HTTP/1.1\r\nHost: a\r\n")),
        ("500 slowloris sockets, 1 byte/s", slowloris),
        ("200 MB header value", huge_header),
        ("6 x 30 large PNGs, abandoned", lambda s: abandoned_classify(s, [biggest] * 30, 6)),
        ("6 x 16 large PNGs (in budget), abandoned", lambda s: abandoned_classify(s, [biggest] * 16, 6)),
        ("8 concurrent 4096x4096 PNGs", lambda s: concurrent_classify(s, biggest, 8)),
        ("HTTP/1.1 without Host", lambda s: raw(s, b"GET /v2/health/live HTTP/1.1\r\n\r\n")),
        ("two Host headers", lambda s: raw(s, b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")),
        ("HTTP/0.9 request line", lambda s: raw(s, b"GET /v2/health/live\r\n\r\n")),
        ("HTTP/2.0 request line", lambda s: raw(s, b"GET /v2/health/live HTTP/2.0\r\nHost: a\r\n\r\n")),
        ("garbage request line", lambda s: raw(s, b"\x16\x03\x01 hello\r\n\r\n")),
        (
            "WebSocket upgrade",
            lambda s: raw(
                s, b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            ),
        ),
        ("16 KB model name (HTTP, gRPC)", long_names),
        ("MULTIPART/FORM-DATA upper case", lambda s: raw(s, _upper_multipart(digit))),
        ("feedback until the disk is full", lambda s: feedback_full(s, digit, mounted)),
        ("every model unloaded", unload_all),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nofile", type=int, default=1024, help="the service's file-descriptor limit")
    parser.add_argument("--only", default="", help="run the cases whose name contains this text")
    args = parser.parse_args(argv)
    digit = png(first_test_image()[0, ..., 0].astype(np.uint8))
    biggest = big_digit()
    rows: list[dict[str, Any]] = []
    with tmpfs(256) as (feedback_dir, mounted):
        cases = [(n, c) for n, c in hostile_cases(digit, biggest, mounted) if args.only in n]
        env = {
            "SERVE_MODELS": "mnist-cnn",
            "SERVE_LOG_LEVEL": "warning",
            "SERVE_FEEDBACK_DIR": str(feedback_dir),
            "SERVE_FEEDBACK_TOKEN": TOKEN,
            "SERVE_ADMIN_TOKEN": ADMIN,
        }
        prlimit = ["prlimit", f"--nofile={args.nofile}:{args.nofile}"]
        RESULTS.mkdir(parents=True, exist_ok=True)
        with served_by(env, RESULTS / "hostile-service.log", prefix=prlimit) as served:
            proc = served.proc
            service = Service(proc, served.port, served.grpc_port)
            header = f"{'case':42} | {'answer':60} | probe p50 / max ms, failures | RSS max MB"
            print(header, flush=True)
            for name, case in cases:
                with Probe(service, digit) as probe:
                    answer = case(service)
                    time.sleep(0.5)  # the probe's last requests of the window
                lat = [1000 * x for x in probe.latencies] or [float("nan")]
                row = {
                    "case": name,
                    "answer": answer,
                    "probe_p50_ms": statistics.median(lat),
                    "probe_max_ms": max(lat),
                    "probe_requests": len(probe.latencies),
                    "probe_failures": probe.failures,
                    "rss_max_mb": max(probe.rss or [float("nan")]),
                    "alive": proc.poll() is None,
                }
                rows.append(row)
                print(
                    f"{name:42} | {answer[:60]:60} | "
                    f"{row['probe_p50_ms']:6.1f} / {row['probe_max_ms']:7.1f}, "
                    f"{len(probe.failures)} of {len(probe.latencies)} | {row['rss_max_mb']:6.0f}",
                    flush=True,
                )
    (RESULTS / "hostile.json").write_text(json.dumps(rows, indent=2))
    return 0 if all(r["alive"] for r in rows) else 1


def _upper_multipart(digit: bytes) -> bytes:
    body, _ = multipart([digit], "B0")
    return (
        b"POST /v2/models/mnist-cnn/classify HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
        b"Content-Type: MULTIPART/FORM-DATA; BOUNDARY=B0\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


if __name__ == "__main__":
    sys.exit(main())

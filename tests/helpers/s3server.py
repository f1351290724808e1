"""A real S3 API server (moto's server mode) in its own process, behind a proxy that can go away.

``moto_server`` keeps its objects in memory, so the store "going away and coming back" is the
:class:`Outage` proxy closing its port and opening it again: clients see connection refused, then the
same objects. Every process here is started and stopped by the fixture that made it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx

from bench.processes import exited, until_bound
from tests.helpers.server import free_port, stop_process

#: boto3's settings for the fake store; moto accepts any key unless authentication is switched on.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server:
    """A running ``moto_server`` reached through ``endpoint`` (the proxy's address)."""

    process: subprocess.Popen[bytes]
    direct: str
    proxy: Outage

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"

    def env(self) -> dict[str, str]:
        """What a client process needs: the endpoint and credentials (standard boto3 variables)."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self) -> Any:
        """A client straight to the server (not through the proxy), for arranging and inspecting."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.direct,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )


def _wait_up(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise exited("moto_server", process, log)
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=1)
            return
        time.sleep(0.05)
    raise TimeoutError(f"moto_server at {url} did not answer within {timeout} s")


@contextlib.contextmanager
def moto_server(log_dir: Path, *, env: dict[str, str] | None = None) -> Iterator[S3Server]:
    """``python -m moto.server`` on a free loopback port (a new one when the one chosen was taken
    first: ``until_bound``), with an :class:`Outage` proxy in front."""
    full_env = {**os.environ, **CREDENTIALS, **(env or {})}

    def start() -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        log_path = log_dir / f"moto-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_up(f"http://127.0.0.1:{port}", process, log_path)
        except BaseException:
            stop_process(process)
            raise
        return process, port

    process, port = until_bound(start)
    proxy = Outage(port)
    try:
        proxy.start()
        yield S3Server(process, f"http://127.0.0.1:{port}", proxy)
    finally:
        proxy.stop()
        stop_process(process)


class Outage:
    """A loopback TCP proxy to ``target_port`` that can be stopped (refusing and cutting connections)
    and started again on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            connections, self._connections = self._connections, set()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = [t for t in self._threads if t.is_alive()]

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections |= {client, upstream}
            done = threading.Barrier(2, action=lambda c=client, u=upstream: self._close(c, u))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b, done), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, done: threading.Barrier) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
            with contextlib.suppress(threading.BrokenBarrierError):
                done.wait(timeout=30)  # the last direction to finish closes both sockets

    def _close(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._connections -= set(sockets)
        for sock in sockets:
            sock.close()

"""Servers as real processes on loopback: free ports, starting until ready, stopping exactly what was started.

A port chosen free is bound by the server a moment later; another process may take it in between. The
server then exits saying so (:data:`PORT_TAKEN`), :func:`started` raises :class:`PortTaken`, and
:func:`until_bound` starts it again on new ports. Any other early exit is an error with the end of the
server's log. The test helpers start their servers (the service, Prometheus, moto) the same way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PortTaken(RuntimeError):
    """A server exited because a port chosen for it was taken between choosing and binding it."""


# What uvicorn, the service's gRPC listener, Prometheus and moto log when a port given them is bound.
PORT_TAKEN = ("address already in use", "cannot listen for grpc", "failed to bind")

T = TypeVar("T")


def log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def exited(name: str, proc: subprocess.Popen[bytes], log: Path) -> RuntimeError:
    """The error for a server that exited before it was ready: :class:`PortTaken` when its log says a
    port it was given was already bound, RuntimeError otherwise; either with the end of the log."""
    tail = log_tail(log)
    error = PortTaken if any(marker in tail.lower() for marker in PORT_TAKEN) else RuntimeError
    return error(f"{name} exited with {proc.returncode}; end of {log}:\n{tail}")


def until_bound(start: Callable[[], T], attempts: int = 3) -> T:
    """``start()``, again while it raises :class:`PortTaken`, up to ``attempts`` times. ``start``
    chooses its ports with :func:`free_port` each time and stops what it started before it raises: a
    port another process took between choosing and binding it costs a retry, not the run."""
    for _ in range(attempts - 1):
        with suppress(PortTaken):
            return start()
    return start()


def started(
    cmd: list[str], env: dict[str, str], ready_url: str, log: Path, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    """``cmd`` (output to ``log``) started and ready: ``ready_url`` answers 200 or 405. If it exits
    first, the error of :func:`exited`; if it is not ready in time, it is stopped and TimeoutError."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while proc.poll() is None:
            with suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=2).status_code in (200, 405):
                    return proc
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cmd[:4]} not ready; end of {log}:\n{log_tail(log)}")
            time.sleep(0.2)
        raise exited(str(cmd[:4]), proc, log)
    except BaseException:
        stop(proc)
        raise


@contextmanager
def process(
    cmd: list[str], env: dict[str, str], ready_url: str, log: Path, cwd: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    """:func:`started`, running until the block ends."""
    proc = started(cmd, env, ready_url, log, cwd)
    try:
        yield proc
    finally:
        stop(proc)


@dataclass(frozen=True)
class Served:
    """A running ``python -m service`` and the ports it listens on (``grpc_port`` 0: gRPC off)."""

    proc: subprocess.Popen[bytes]
    port: int
    grpc_port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


@contextmanager
def service(
    env: dict[str, str],
    log: Path,
    *,
    args: Sequence[str] = (),
    prefix: Sequence[str] = (),
    cwd: Path = ROOT,
    grpc: bool = True,
    attempts: int = 3,
) -> Iterator[Served]:
    """``python -m service`` (after ``prefix``, e.g. ``prlimit``) on free loopback ports with ``env``'s
    settings, ready until the block ends; started on new ports when one was taken (:func:`until_bound`)."""

    def start() -> Served:
        port, grpc_port = free_port(), free_port() if grpc else 0
        cmd = [*prefix, sys.executable, "-m", "service", "--port", str(port), *args]
        full_env = {**env, "SERVE_GRPC_PORT": str(grpc_port)}
        ready = f"http://127.0.0.1:{port}/v2/health/ready"
        return Served(started(cmd, full_env, ready, log, cwd), port, grpc_port)

    served = until_bound(start, attempts)
    try:
        yield served
    finally:
        stop(served.proc)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM a process this benchmark started; SIGKILL it if it outlives ``timeout``."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()

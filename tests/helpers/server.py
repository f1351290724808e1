"""Start the service as a real process on a free loopback port, and stop exactly that process."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers.data import MODELS, ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningService:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    grpc_port: int = 0  # 0: gRPC off

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


# What uvicorn and the gRPC listener log when a port they were given is already bound.
PORT_TAKEN = ("address already in use", "cannot listen for grpc", "failed to bind")


class PortTaken(RuntimeError):
    """The service exited because a port chosen for it was bound by another process before it was."""


def port_taken(log: Path) -> bool:
    """Whether a server that exited early says, in ``log``, that a port it was given was in use."""
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]).lower()
    return any(marker in tail for marker in PORT_TAKEN)


def wait_ready(
    url: str, process: subprocess.Popen[bytes], timeout: float = 90.0, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log else ""
            error = PortTaken if log and port_taken(log) else RuntimeError
            raise error(f"service exited early with code {process.returncode}:\n{tail}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"service at {url} not ready after {timeout} s")


@contextmanager
def running_service(
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    ready: bool = True,
    nofile: int | None = None,
    attempts: int = 3,
) -> Iterator[RunningService]:
    """``python -m service`` on a free port with ``SERVE_*`` settings from ``env``; gRPC on another free
    port unless ``env`` sets ``SERVE_GRPC_PORT``; ``nofile``: the process's file-descriptor limit.

    With ``ready``, a start that fails because a port chosen here was taken by another process before
    the service bound it is retried on new ports, up to ``attempts`` starts."""

    def limit_fds() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    for attempt in range(attempts):
        port = free_port()
        log_path = tmp_path / f"service-{port}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_")}
        full_env.update({"SERVE_MODEL_REPOSITORY": str(MODELS), "PYTHONUNBUFFERED": "1"})
        full_env["SERVE_GRPC_PORT"] = str(free_port())
        full_env.update(env or {})
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), *(args or [])],
                cwd=ROOT,
                env=full_env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=limit_fds if nofile is not None else None,
            )
        service = RunningService(process, port, log_path, int(full_env["SERVE_GRPC_PORT"]))
        try:
            if ready:
                try:
                    wait_ready(service.url, process, log=log_path)
                except PortTaken:
                    if attempt + 1 < attempts:
                        continue
                    raise
            yield service
            return
        finally:
            stop_process(process)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM a process this test started, then SIGKILL it if it has not exited within ``timeout``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

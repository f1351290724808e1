"""Start the service as a real process on a free loopback port, and stop exactly that process."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.processes import Served, exited, free_port, until_bound
from tests.helpers.data import MODELS, ROOT

#: What a server's command is, given its HTTP and gRPC ports: its argv and its whole environment.
Command = Callable[[int, int], tuple[list[str], dict[str, str]]]


@dataclass(frozen=True)
class RunningService(Served):
    """A service process a test started (``proc``, ports, ``url``: :class:`bench.processes.Served`) and
    the file its output goes to."""

    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_ready(
    url: str, process: subprocess.Popen[bytes], timeout: float = 90.0, log: Path | None = None
) -> None:
    """Until ``url``'s ``/v2/health/ready`` answers 200. A process that exits first raises; given its
    ``log``, ``bench.processes.PortTaken`` when it says a port it was given was bound."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            if log is not None:
                raise exited("the service", process, log)
            raise RuntimeError(f"service exited early with code {process.returncode}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"service at {url} not ready after {timeout} s")


def serve_on_free_ports(
    command: Command,
    log: Callable[[int], Path],
    *,
    ready: bool = True,
    preexec_fn: Callable[[], None] | None = None,
    attempts: int = 3,
) -> RunningService:
    """The service as ``command`` runs it on two free ports (output to ``log(http_port)``), ready
    unless ``ready`` is False; started on new ports when one was taken first (``until_bound``). Its
    gRPC port is the one ``command``'s environment gives it."""

    def start() -> RunningService:
        port, grpc_port = free_port(), free_port()
        argv, env = command(port, grpc_port)
        log_path = log(port)
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec_fn
            )
        service = RunningService(process, port, int(env.get("SERVE_GRPC_PORT", grpc_port)), log_path)
        if ready:
            try:
                wait_ready(service.url, process, log=log_path)
            except BaseException:
                stop_process(process)
                raise
        return service

    return until_bound(start, attempts)


@contextmanager
def running_service(
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    ready: bool = True,
    nofile: int | None = None,
) -> Iterator[RunningService]:
    """``python -m service`` on a free port with ``SERVE_*`` settings from ``env``; gRPC on another free
    port unless ``env`` sets ``SERVE_GRPC_PORT``; ``nofile``: the process's file-descriptor limit."""

    def limit_fds() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    def command(port: int, grpc_port: int) -> tuple[list[str], dict[str, str]]:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SERVE_")}
        full_env.update({"SERVE_MODEL_REPOSITORY": str(MODELS), "PYTHONUNBUFFERED": "1"})
        full_env["SERVE_GRPC_PORT"] = str(grpc_port)
        full_env.update(env or {})
        argv = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), *(args or [])]
        return argv, full_env

    service = serve_on_free_ports(
        command,
        lambda port: tmp_path / f"service-{port}.log",
        ready=ready,
        preexec_fn=limit_fds if nofile is not None else None,
    )
    try:
        yield service
    finally:
        stop_process(service.proc)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM a process this test started, then SIGKILL it if it has not exited within ``timeout``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

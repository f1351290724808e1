"""The bench's server processes (:mod:`bench.processes`) and the test helpers (the service's, moto's)
start their server again on other ports when a port they chose was bound by another process before the
server bound it (the race CI met once), and only then."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from bench import processes
from tests.helpers import server


@contextmanager
def taken_port() -> Iterator[int]:
    """A loopback port another process (here: this one) listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def first_then_free(monkeypatch: pytest.MonkeyPatch, module: object, taken: int, skip: int = 0) -> list[int]:
    """Make ``module.free_port`` answer ``taken`` on its call number ``skip`` (0-based), then real free
    ports; returns every port it handed out."""
    real, handed = module.free_port, []  # type: ignore[attr-defined]

    def free_port() -> int:
        port = taken if len(handed) == skip else real()
        handed.append(port)
        return port

    monkeypatch.setattr(module, "free_port", free_port)
    return handed


def test_the_bench_restarts_the_service_when_its_grpc_port_was_taken(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with taken_port() as taken:
        handed = first_then_free(monkeypatch, processes, taken, skip=1)  # HTTP port first, then gRPC
        env = {"SERVE_MODELS": "mnist-mlp", "SERVE_LOG_LEVEL": "warning"}
        with processes.service(env, tmp_path / "service.log") as served:
            assert served.grpc_port != taken and served.proc.poll() is None
            assert httpx.get(f"{served.url}/v2/health/ready", timeout=5).status_code == 200
        assert len(handed) == 4  # two starts, two ports each


def test_the_bench_gives_up_with_the_log_when_every_start_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with taken_port() as taken:
        monkeypatch.setattr(processes, "free_port", lambda: taken)
        env = {"SERVE_MODELS": "mnist-mlp"}
        refused = pytest.raises(processes.PortTaken, match="address already in use")
        with refused, processes.service(env, tmp_path / "s.log", grpc=False, attempts=2):
            pass


def test_a_service_that_fails_for_another_reason_is_not_restarted(tmp_path: Path) -> None:
    env = {"SERVE_MODELS": "mnist-mlp", "SERVE_MAX_BATCH_SIZE": "0"}
    failed = pytest.raises(RuntimeError, match="SERVE_MAX_BATCH_SIZE")
    with failed as raised, processes.service(env, tmp_path / "s.log", grpc=False):
        pass
    assert not isinstance(raised.value, processes.PortTaken)


def test_the_test_helper_restarts_the_service_when_its_http_port_was_taken(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with taken_port() as taken:
        handed = first_then_free(monkeypatch, server, taken)
        with server.running_service(tmp_path, env={"SERVE_MODELS": "mnist-mlp"}) as running:
            assert running.port != taken
            assert httpx.get(f"{running.url}/v2/health/ready", timeout=5).status_code == 200
        assert len(handed) == 4
        assert "address already in use" in (tmp_path / f"service-{taken}.log").read_text()


def test_the_moto_helper_restarts_moto_when_its_port_was_taken(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.helpers import s3server

    with taken_port() as taken:
        handed = first_then_free(monkeypatch, s3server, taken)
        with s3server.moto_server(tmp_path) as s3:
            assert s3.direct != f"http://127.0.0.1:{taken}"
            assert httpx.get(s3.direct, timeout=5).status_code < 500
        assert "address already in use" in (tmp_path / f"moto-{taken}.log").read_text().lower()
        assert len(handed) >= 3  # moto's port twice, and the proxy's

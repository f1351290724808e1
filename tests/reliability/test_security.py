"""Nobody in where they do not belong: path traversal through model names, and the admin token.

A sentinel model sits next to the repository, where a traversal (``../secret``) would find it; the
service must never serve it, and (checked with a Python audit hook on the process's own file accesses)
never open or list anything outside the repository while answering hostile names.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.helpers.modelfactory import write_model_version
from tests.helpers.server import running_service
from tests.reliability.support import assert_error_body, images, json_body, metric

TOKEN = "reliability-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# Model names as they appear in a URL path segment, already percent-encoded where needed.
HOSTILE_NAMES = [
    "%2e%2e",  # literal "." and ".." segments are normalised by HTTP clients: see the raw-socket test
    "%2e",
    "..%2Fsecret",
    "%2e%2e%2fsecret",
    "%2E%2E%2Fsecret",
    "..%5Csecret",
    "%252e%252e%252fsecret",
    "tiny%2F..%2F..%2Fsecret",
    "%2Fetc%2Fpasswd",
    "..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "secret%00",
    "%c0%ae%c0%ae",
    ".tmp-1",
    "a" * 65,
    "a" * 300,
    "TINY",
    "tiny%20",
    "%F0%9F%92%A5",
    "secret",
    "link",
]
ROUTES = [
    ("GET", "/v2/models/{}"),
    ("GET", "/v2/models/{}/versions/1"),
    ("GET", "/v2/models/{}/ready"),
    ("GET", "/v2/models/{}/versions/1/ready"),
    ("GET", "/v2/models/{}/stats"),
    ("POST", "/v2/models/{}/infer"),
    ("POST", "/v2/models/{}/versions/1/infer"),
    ("POST", "/v2/models/{}/classify"),
    ("POST", "/v2/repository/models/{}/load"),
    ("POST", "/v2/repository/models/{}/unload"),
]


class FileAccesses:
    """Paths this process opens, lists or changes while recording (``sys.addaudithook``, all threads).

    An audit hook cannot be removed, so one is installed per process and gated by ``recording``.
    """

    EVENTS = frozenset(
        {"open", "os.listdir", "os.scandir", "os.mkdir", "os.remove", "os.rename", "os.rmdir", "os.symlink"}
    )
    _installed: FileAccesses | None = None

    def __init__(self) -> None:
        self.recording = False
        self.paths: list[str] = []

    @classmethod
    def get(cls) -> FileAccesses:
        if cls._installed is None:
            cls._installed = cls()
            sys.addaudithook(cls._installed._hook)
        return cls._installed

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if (
            self.recording
            and event in self.EVENTS
            and args
            and isinstance(args[0], str | bytes | os.PathLike)
        ):
            self.paths.append(os.path.abspath(os.fsdecode(args[0])))


@dataclass
class Sandbox:
    root: Path  # holds the repository and, beside it, the sentinel
    repo: Path
    secret: Path


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    repo = tmp_path / "repo"
    write_model_version(repo, "tiny", 1)
    # What "../secret" from the repository would reach: a complete, valid model version.
    write_model_version(tmp_path, "secret", 1, seed=9)
    (repo / "link").symlink_to(tmp_path / "secret")  # a model directory escaping through a symlink
    return Sandbox(tmp_path, repo, tmp_path / "secret")


@pytest.mark.parametrize("compute", ["process", "thread"])
def test_hostile_model_names_never_leave_the_repository(sandbox: Sandbox, compute: str) -> None:
    accesses = FileAccesses.get()
    settings = Settings(model_repository=sandbox.repo, admin_token=TOKEN, poll_interval_s=0, compute=compute)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v2/models/tiny").status_code == 200
        accesses.paths.clear()
        accesses.recording = True
        try:
            # The audit hook sees the app's own file accesses: a real (re)load reads the repository.
            assert client.post("/v2/repository/models/tiny/unload", headers=AUTH).status_code == 200
            assert client.post("/v2/repository/models/tiny/load", headers=AUTH).status_code == 200
            control = list(accesses.paths)
            for name in HOSTILE_NAMES:
                for method, template in ROUTES:
                    path = template.format(name)
                    response = client.request(method, path, headers=AUTH, content=json_body(images(1)))
                    message = assert_error_body(response.status_code, response.content, (400, 404))
                    assert str(sandbox.root) not in message, (path, message)
        finally:
            accesses.recording = False
        # The audit hook sees this process only: with compute processes, model.onnx is read in the child
        # (at the path this process chose, after every check of the name).
        read = "model.onnx" if compute == "thread" else "metadata.json"
        assert str(sandbox.repo / "tiny" / "1" / read) in control, control
        outside = [
            p for p in accesses.paths if Path(p).is_relative_to(sandbox.root) and not _in_repo(p, sandbox)
        ]
        assert not outside, outside
        assert not [p for p in accesses.paths if "passwd" in p]
        # Nothing but the repository's model was ever loaded or listed.
        assert [r["name"] for r in client.post("/v2/repository/index").json()] == ["tiny"]
        text = client.get("/metrics").text
        assert metric(text, "model_load_total", model="tiny", result="ok") == 2
        assert "secret" not in text and "link" not in text


def _in_repo(path: str, sandbox: Sandbox) -> bool:
    # Resolve symlinks: repo/link/... is outside the repository even though it is spelled inside.
    return Path(path).resolve().is_relative_to(sandbox.repo.resolve())


# ---- the admin token -----------------------------------------------------------------------------------


@pytest.fixture
def compare_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every ``hmac.compare_digest`` call the service makes, recorded and passed through."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    return calls


def test_admin_token_is_compared_in_constant_time(tmp_path: Path, compare_calls: list[Any]) -> None:
    write_model_version(tmp_path, "tiny", 1)
    with TestClient(create_app(Settings(model_repository=tmp_path, admin_token=TOKEN))) as client:
        wrong = [
            "x" * len(TOKEN),  # same length
            TOKEN[:-1],  # a prefix: an early-exit comparison would answer faster
            TOKEN + "x",
            TOKEN.upper(),
            "short",
        ]
        for given in wrong:
            response = client.post(
                "/v2/repository/models/tiny/unload", headers={"Authorization": f"Bearer {given}"}
            )
            assert "invalid admin token" in assert_error_body(response.status_code, response.content, (403,))
        assert len(compare_calls) == len(wrong)
        assert all(expected == TOKEN.encode() for _, expected in compare_calls)
        # Missing or malformed credentials never reach the comparison.
        for headers in (
            {},
            {"Authorization": TOKEN},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": "Bearer"},
        ):
            response = client.post("/v2/repository/models/tiny/unload", headers=headers)
            assert_error_body(response.status_code, response.content, (401,))
            assert response.headers["WWW-Authenticate"] == "Bearer"
        assert len(compare_calls) == len(wrong)
        assert client.get("/v2/models/tiny").status_code == 200  # nothing was unloaded
        assert client.post("/v2/repository/models/tiny/unload", headers=AUTH).status_code == 200
        assert len(compare_calls) == len(wrong) + 1
        assert client.get("/v2/models/tiny").status_code == 404


def test_no_token_configured_disables_admin(tmp_path: Path, compare_calls: list[Any]) -> None:
    write_model_version(tmp_path, "tiny", 1)
    with TestClient(create_app(Settings(model_repository=tmp_path))) as client:
        for headers in ({}, AUTH, {"Authorization": "Bearer "}, {"Authorization": "Bearer null"}):
            for action in ("load", "unload"):
                response = client.post(f"/v2/repository/models/tiny/{action}", headers=headers)
                message = assert_error_body(response.status_code, response.content, (403,))
                assert "disabled" in message
        assert compare_calls == []
        assert client.get("/v2/models/tiny").status_code == 200


def test_token_never_in_logs_or_answers_in_process(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_model_version(tmp_path, "tiny", 1)
    caplog.set_level(logging.DEBUG)
    bodies: list[bytes] = []
    with TestClient(create_app(Settings(model_repository=tmp_path, admin_token=TOKEN))) as client:
        for headers in (AUTH, {"Authorization": "Bearer wrong-token-wrong-token"}, {}):
            for action in ("unload", "load", "unload", "load"):
                bodies.append(client.post(f"/v2/repository/models/tiny/{action}", headers=headers).content)
        bodies.append(client.post("/v2/repository/models/nope/load", headers=AUTH).content)
        bodies.append(client.get("/metrics").content)
        bodies.append(client.get("/openapi.json").content)
    assert "admin_token" in caplog.text  # the settings echo ran, masked
    assert TOKEN not in caplog.text
    assert not [b for b in bodies if TOKEN.encode() in b]


@pytest.mark.slow
def test_real_process_keeps_the_token_out_of_its_log_and_refuses_raw_traversal(sandbox: Sandbox) -> None:
    env = {
        "SERVE_MODEL_REPOSITORY": str(sandbox.repo),
        "SERVE_ADMIN_TOKEN": TOKEN,
        "SERVE_LOG_LEVEL": "debug",
        "SERVE_POLL_INTERVAL_S": "0.2",
    }
    logs = sandbox.root / "logs"
    logs.mkdir()
    with running_service(logs, env=env) as service:
        for headers in (AUTH, {"Authorization": "Bearer not-the-token-at-all"}):
            for action in ("unload", "load"):
                httpx.post(f"{service.url}/v2/repository/models/tiny/{action}", headers=headers)
        # Literal dot segments, which HTTP clients normalise away, sent as raw bytes.
        for target in (
            "/v2/models/./secret",
            "/v2/models/../secret",
            "/v2/models/../secret/infer",
            "/v2/models/../../etc/passwd",
            "/v2/models/tiny/../../secret/ready",
            f"/v2/repository/models/{quote('../secret', safe='')}/load",
            "/v2/repository/models/../secret/load",
        ):
            status, body = raw_post(service.port, target)
            assert_error_body(status, body, (400, 404, 405))
        assert httpx.get(f"{service.url}/v2/models/tiny").status_code == 200
        assert httpx.get(f"{service.url}/v2/models/secret").status_code == 404
    log = service.log()
    assert "admin_token" in log and "serving tiny version 1" in log
    assert TOKEN not in log
    assert "serving secret" not in log and str(sandbox.secret) not in log


def raw_post(port: int, target: str) -> tuple[int, bytes]:
    """POST ``target`` exactly as written (no normalisation), with an empty JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"POST {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Length: 2\r\nConnection: close\r\n\r\n{}".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body

"""service.settings: bounds, the environment, and the validator that refuses inconsistent settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service import settings as settings_module
from service.repository import VersionPolicy
from service.settings import Settings


def test_defaults() -> None:
    s = Settings()
    assert (s.model_repository, s.models, s.version_policy) == (Path("models"), None, "latest:1")
    assert (s.max_batch_size, s.max_queue_delay_us, s.max_queue_rows, s.max_request_rows) == (
        32,
        500,
        2048,
        256,
    )
    assert s.admin_token is None and s.policy == VersionPolicy("latest", count=1)


def test_read_from_serve_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVE_MODELS", " mnist-cnn, fashion-cnn ,")
    monkeypatch.setenv("SERVE_PROVIDERS", "CPUExecutionProvider")
    monkeypatch.setenv("SERVE_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("SERVE_VERSION_POLICY", "SPECIFIC: 3,1")
    s = Settings()
    assert s.models == ["mnist-cnn", "fashion-cnn"]
    assert s.providers == ["CPUExecutionProvider"]
    assert s.max_batch_size == 8
    assert s.version_policy == "specific:1,3"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"max_request_rows": 4096, "max_queue_rows": 2048}, "max_request_rows (4096) must not exceed"),
        (
            {"max_batch_size": 64, "max_queue_rows": 32, "max_request_rows": 16},
            "max_batch_size (64) must not",
        ),
    ],
)
def test_the_validator_refuses_settings_that_cannot_work(overrides: dict[str, int], fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**overrides)  # type: ignore[arg-type]
    assert fragment in str(caught.value)


def test_consistent_edge_values_pass_the_validator() -> None:
    s = Settings(max_request_rows=64, max_queue_rows=64, max_batch_size=64)
    assert (s.max_request_rows, s.max_queue_rows, s.max_batch_size) == (64, 64, 64)


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_batch_size": 0},
        {"max_queue_delay_us": -1},
        {"max_body_bytes": 10},
        {"default_timeout_s": 0},
        {"intra_op_threads": 1000},
        {"admin_token": "short"},
        {"log_level": "verbose"},
        {"version_policy": "newest"},
        {"unknown_setting": 1},
    ],
)
def test_out_of_bounds_and_unknown_values_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**overrides)  # type: ignore[arg-type]


def test_compute_threads_leave_a_core_to_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module.os, "sched_getaffinity", lambda pid: set(range(8)))
    assert Settings().compute_threads == 7
    assert Settings(intra_op_threads=3).compute_threads == 3
    monkeypatch.setattr(settings_module.os, "sched_getaffinity", lambda pid: {0})
    assert Settings().compute_threads == 1


def test_describe_masks_the_admin_token() -> None:
    described = Settings(admin_token="a-very-secret-admin-token").describe()
    assert described["admin_token"] == "***"
    assert "a-very-secret-admin-token" not in str(described)
    assert Settings().describe()["admin_token"] is None


def test_settings_are_frozen() -> None:
    with pytest.raises(ValidationError):
        Settings().max_batch_size = 4  # type: ignore[misc]

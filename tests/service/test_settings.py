"""service.settings: bounds, the environment, the validator that refuses inconsistent settings, and the
feedback fields."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service import settings as settings_module
from service.settings import Settings
from service.storage.discovery import VersionPolicy


def test_defaults() -> None:
    s = Settings()
    assert (s.model_repository, s.models, s.version_policy) == ("models", None, "latest:1")
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
        {"log_format": "xml"},
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


def test_grpc_port_defaults_to_tritons_and_zero_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().grpc_port == 8001
    monkeypatch.setenv("SERVE_GRPC_PORT", "0")
    assert Settings().grpc_port == 0
    for bad in (-1, 65536):
        with pytest.raises(ValidationError, match="grpc_port"):
            Settings(grpc_port=bad)


# ---- feedback ------------------------------------------------------------------------------------------

TOKEN = "f" * 32


def test_feedback_is_off_by_default() -> None:
    settings = Settings()
    assert settings.feedback_dir is None and not settings.feedback_enabled


def test_feedback_needs_both_a_directory_and_a_token(tmp_path: Path) -> None:
    assert Settings(feedback_dir=tmp_path, feedback_token=TOKEN).feedback_enabled
    # A directory alone keeps the write API off: it is never open to everyone.
    assert not Settings(feedback_dir=tmp_path).feedback_enabled


def test_a_token_without_a_directory_is_refused() -> None:
    with pytest.raises(ValidationError, match="feedback_token is set but feedback_dir is not"):
        Settings(feedback_token=TOKEN)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("feedback_token", "short"),
        ("feedback_max_items", 0),
        ("feedback_max_items", 10**8),
        ("feedback_max_bytes", 1023),
        ("feedback_max_bytes", 2 * 1024**4),
    ],
)
def test_feedback_bounds(field: str, value: object, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(feedback_dir=tmp_path, **{field: value})


def test_feedback_settings_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVE_FEEDBACK_DIR", str(tmp_path))
    monkeypatch.setenv("SERVE_FEEDBACK_TOKEN", TOKEN)
    monkeypatch.setenv("SERVE_FEEDBACK_MAX_ITEMS", "12")
    monkeypatch.setenv("SERVE_FEEDBACK_MAX_BYTES", "4096")
    settings = Settings()
    assert (settings.feedback_dir, settings.feedback_max_items, settings.feedback_max_bytes) == (
        tmp_path,
        12,
        4096,
    )


def test_the_feedback_token_is_masked_in_the_start_up_echo(tmp_path: Path) -> None:
    described = Settings(feedback_dir=tmp_path, feedback_token=TOKEN, admin_token=TOKEN).describe()
    assert described["feedback_token"] == described["admin_token"] == "***"
    assert TOKEN not in repr(described)
    assert described["feedback_dir"] == str(tmp_path)


def test_batch_wait_defaults_to_adaptive() -> None:
    assert Settings().batch_wait == "adaptive"


def test_batch_wait_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVE_BATCH_WAIT", "fixed")
    assert Settings().batch_wait == "fixed"


def test_unknown_batch_wait_is_refused() -> None:
    with pytest.raises(ValidationError, match="batch_wait"):
        Settings(batch_wait="eager")  # type: ignore[arg-type]


def test_the_repository_is_a_directory_or_an_s3_url(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(model_repository=Path("/srv/models")).model_repository == "/srv/models"
    monkeypatch.setenv("SERVE_MODEL_REPOSITORY", "s3://digits-models/models")
    assert Settings().model_repository == "s3://digits-models/models"  # not folded to s3:/ as a Path
    for value, fragment in (("gs://bucket/x", "unsupported repository"), ("s3://No_Such/x", "bucket name")):
        with pytest.raises(ValidationError, match=fragment):
            Settings(model_repository=value)
    with pytest.raises(ValidationError, match="model_cache_bytes"):
        Settings(model_cache_bytes=1024)

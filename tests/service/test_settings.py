"""Settings: the feedback fields, their bounds, the validator and the masked start-up echo."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings

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

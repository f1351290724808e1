"""Settings: the batch wait knob, from arguments and from the environment."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_batch_wait_defaults_to_adaptive() -> None:
    assert Settings().batch_wait == "adaptive"


def test_batch_wait_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVE_BATCH_WAIT", "fixed")
    assert Settings().batch_wait == "fixed"


def test_unknown_batch_wait_is_refused() -> None:
    with pytest.raises(ValidationError, match="batch_wait"):
        Settings(batch_wait="eager")  # type: ignore[arg-type]

"""service.http.paths: the infer path and the version a URL names."""

from __future__ import annotations

import pytest

from service.errors import InvalidInput
from service.http.paths import INFER_PATH, url_version


def test_infer_path() -> None:
    assert INFER_PATH.fullmatch("/v2/models/m/infer").groups() == ("m", None)  # type: ignore[union-attr]
    assert INFER_PATH.fullmatch("/v2/models/m/versions/3/infer").groups() == ("m", "3")  # type: ignore[union-attr]
    assert INFER_PATH.fullmatch("/v2/models/m/infer/more") is None
    assert INFER_PATH.fullmatch("/v2/models/m/versions/infer") is None


@pytest.mark.parametrize(("text", "version"), [(None, None), ("1", 1), ("42", 42)])
def test_url_versions(text: str | None, version: int | None) -> None:
    assert url_version(text) == version


@pytest.mark.parametrize("text", ["0", "01", "x", "-1", "1.0", "9" * 19])
def test_url_versions_refused(text: str) -> None:
    with pytest.raises(InvalidInput, match="model version must be a positive integer"):
        url_version(text)

"""service.storage.discovery: version policies and discovery on real directory trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.storage.discovery import VersionPolicy, scan_repository
from tests.helpers.modelfactory import write_model_version

# ---- version policies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "policy", "canonical"),
    [
        ("latest", VersionPolicy("latest", count=1), "latest:1"),
        ("latest:1", VersionPolicy("latest", count=1), "latest:1"),
        ("latest:3", VersionPolicy("latest", count=3), "latest:3"),
        (" LATEST:2 ", VersionPolicy("latest", count=2), "latest:2"),
        ("all", VersionPolicy("all"), "all"),
        ("specific:3", VersionPolicy("specific", versions=(3,)), "specific:3"),
        ("specific:3,1,3", VersionPolicy("specific", versions=(1, 3)), "specific:1,3"),
        ("specific: 1, 3", VersionPolicy("specific", versions=(1, 3)), "specific:1,3"),
    ],
)
def test_policy_parse_and_str(text: str, policy: VersionPolicy, canonical: str) -> None:
    parsed = VersionPolicy.parse(text)
    assert parsed == policy
    assert str(parsed) == canonical
    assert VersionPolicy.parse(str(parsed)) == parsed


@pytest.mark.parametrize(
    "text",
    [
        "",
        "newest",
        "latest:",
        "latest:0",
        "latest:-1",
        "latest:x",
        "latest:1.5",
        "all:2",
        "specific",
        "specific:",
        "specific:0",
        "specific:1,,2",
        "specific:a",
        "specific:-3",
    ],
)
def test_policy_parse_errors(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid version policy .*expected 'latest', 'latest:N'"):
        VersionPolicy.parse(text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "newest"}, "unknown version policy kind"),
        ({"kind": "latest", "count": 0}, "count must be >= 1"),
        ({"kind": "specific"}, "needs one or more positive versions"),
        ({"kind": "specific", "versions": (0,)}, "needs one or more positive versions"),
        ({"kind": "all", "versions": (1,)}, "takes no version list"),
    ],
)
def test_policy_construction_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VersionPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("policy", "available", "selected"),
    [
        ("latest", [3, 1, 10, 2], [10]),
        ("latest:2", [3, 1, 10, 2], [3, 10]),
        ("latest:5", [2, 1], [1, 2]),
        ("latest:2", [], []),
        ("all", [3, 1, 2, 3], [1, 2, 3]),
        ("specific:1,3", [2, 3, 4], [3]),
        ("specific:1,3", [3, 1], [1, 3]),
        ("specific:7", [1, 2], []),
    ],
)
def test_policy_select(policy: str, available: list[int], selected: list[int]) -> None:
    assert VersionPolicy.parse(policy).select(iter(available)) == selected


# ---- scanning -----------------------------------------------------------------------------------------


def _version(
    root: Path, name: str, version: str, files: tuple[str, ...] = ("model.onnx", "metadata.json")
) -> Path:
    path = root / name / version
    path.mkdir(parents=True)
    for file in files:
        (path / file).write_text("{}")
    return path


def test_scan_finds_complete_versions_in_numeric_order(tmp_path: Path) -> None:
    write_model_version(tmp_path, "tiny", 2)
    for version in ("10", "1"):
        _version(tmp_path, "tiny", version)
    _version(tmp_path, "other", "1")
    assert scan_repository(tmp_path) == {"other": [1], "tiny": [1, 2, 10]}


def test_scan_ignores_training_artifacts_inside_a_version(tmp_path: Path) -> None:
    written = write_model_version(tmp_path, "tiny", 1)
    (written.path / "train").mkdir()
    (written.path / "train" / "model.keras").write_bytes(b"keras")
    (tmp_path / "tiny" / "2" / "train").mkdir(parents=True)  # only training files: not a version
    (tmp_path / "tiny" / "2" / "train" / "model.keras").write_bytes(b"keras")
    assert scan_repository(tmp_path) == {"tiny": [1]}


def test_scan_ignores_invalid_names_and_versions(tmp_path: Path) -> None:
    _version(tmp_path, "good", "1")
    for bad_name in ("Bad", ".hidden", "a b", "_x", ".tmp-good"):
        _version(tmp_path, bad_name, "1")
    for bad_version in ("01", "0", "-1", "x", "1.0", ".tmp-2", ".tmp-2-abcd", "2.tmp"):
        _version(tmp_path, "good", bad_version)
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "good" / "3").write_text("a file, not a version directory")
    assert scan_repository(tmp_path) == {"good": [1]}


def test_scan_requires_both_files_as_regular_files(tmp_path: Path) -> None:
    _version(tmp_path, "m", "1")
    _version(tmp_path, "m", "2", files=("model.onnx",))
    _version(tmp_path, "m", "3", files=("metadata.json",))
    (_version(tmp_path, "m", "4", files=("metadata.json",)) / "model.onnx").mkdir()
    _version(tmp_path, "empty", "1", files=())
    (tmp_path / "bare").mkdir()
    assert scan_repository(tmp_path) == {"bare": [], "empty": [], "m": [1]}


def test_scan_never_follows_symlinks_out_of_the_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "repo", tmp_path / "outside"
    _version(outside, "escaped", "1")
    _version(outside, "elsewhere", "7")
    _version(root, "m", "1")
    (root / "escaped").symlink_to(outside / "escaped")  # model directory outside
    (root / "m" / "7").symlink_to(outside / "elsewhere" / "7")  # version directory outside
    linked = _version(root, "m", "2", files=("metadata.json",))
    (linked / "model.onnx").symlink_to(outside / "elsewhere" / "7" / "model.onnx")  # file outside
    loop = root / "m" / "9"
    loop.symlink_to(loop)
    assert scan_repository(root) == {"m": [1]}


def test_scan_follows_symlinks_that_stay_inside_the_root(tmp_path: Path) -> None:
    target = _version(tmp_path, "m", "1")
    (tmp_path / "alias").symlink_to(tmp_path / "m")
    version = tmp_path / "m" / "2"
    version.mkdir()
    for file in ("model.onnx", "metadata.json"):
        (version / file).symlink_to(target / file)
    assert scan_repository(tmp_path) == {"alias": [1, 2], "m": [1, 2]}


def test_scan_through_a_symlinked_root(tmp_path: Path) -> None:
    _version(tmp_path / "real", "m", "1")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert scan_repository(tmp_path / "link") == {"m": [1]}


def test_scan_names_filter(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        _version(tmp_path, name, "1")
    assert scan_repository(tmp_path, ["a", "c", "missing", "../a"]) == {"a": [1], "c": [1]}
    assert scan_repository(tmp_path, set()) == {}


def test_scan_missing_or_non_directory_root(tmp_path: Path) -> None:
    assert scan_repository(tmp_path / "nope") == {}
    (tmp_path / "file").write_text("x")
    assert scan_repository(tmp_path / "file") == {}

"""Model repository discovery: which models and versions exist under the repository root.

The layout and the name and version rules are the contract's (:mod:`service.contract`,
``docs/repository.md``). This module only looks; loading, serving and swapping belong to the registry.
Model names are validated before they become paths, and nothing that resolves outside the root is
ever followed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.contract import MAX_VERSION_DIGITS, VERSION_FILES, parse_version, valid_model_name, version_dir


@dataclass(frozen=True)
class VersionPolicy:
    """Which of a model's versions to serve (``SERVE_VERSION_POLICY``).

    ``latest:N`` serves the N newest, ``all`` every complete version, ``specific:1,3`` exactly those
    that exist. ``str(policy)`` is the canonical text and parses back to an equal policy.
    """

    kind: Literal["latest", "all", "specific"]
    count: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("latest", "all", "specific"):
            raise ValueError(f"unknown version policy kind {self.kind!r}")
        if self.count < 1:
            raise ValueError(f"version policy count must be >= 1, got {self.count}")
        if self.kind == "specific":
            if not self.versions or any(v < 1 for v in self.versions):
                raise ValueError("a 'specific' version policy needs one or more positive versions")
        elif self.versions:
            raise ValueError(f"a {self.kind!r} version policy takes no version list")

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """Parse ``latest``, ``latest:N`` (N >= 1), ``all`` or ``specific:V[,V...]``; ValueError otherwise."""
        kind, sep, arg = text.strip().lower().partition(":")
        kind, arg = kind.strip(), arg.strip()
        usage = "expected 'latest', 'latest:N' (N >= 1), 'all' or 'specific:1,3'"
        if kind == "latest" and not sep:
            return cls("latest")
        if kind == "latest":
            count = _positive(arg)
            if count is None:
                raise ValueError(f"invalid version policy {text!r}: N must be a positive integer; {usage}")
            return cls("latest", count=count)
        if kind == "all" and not sep:
            return cls("all")
        if kind == "specific" and sep:
            parsed = [_positive(part.strip()) for part in arg.split(",")]
            if not parsed or None in parsed:
                raise ValueError(
                    f"invalid version policy {text!r}: versions must be positive integers; {usage}"
                )
            return cls("specific", versions=tuple(sorted({v for v in parsed if v is not None})))
        raise ValueError(f"invalid version policy {text!r}: {usage}")

    def select(self, available: Iterable[int]) -> list[int]:
        """The versions to serve out of ``available``, sorted ascending."""
        versions = sorted(set(available))
        if self.kind == "latest":
            return versions[-self.count :]
        if self.kind == "specific":
            return [v for v in versions if v in self.versions]
        return versions

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return "all"


def _positive(text: str) -> int | None:
    value = int(text) if text.isascii() and text.isdigit() and len(text) <= MAX_VERSION_DIGITS else 0
    return value if value >= 1 else None


def scan_repository(root: Path, names: Collection[str] | None = None) -> dict[str, list[int]]:
    """Map each model under ``root`` (restricted to ``names`` when given) to its complete versions, sorted.

    A model directory must have a valid name; a version directory a canonical positive integer name
    (:func:`parse_version`); a version is complete when both :data:`VERSION_FILES` are regular files.
    Symlinks are followed only while they stay under ``root``. Models without a complete version map to
    ``[]`` so the caller can report them. A missing root gives ``{}``. Whether a complete version's sha256
    and signature are right is :func:`service.core.runtime.load_model`'s business.
    """
    try:
        entries = list(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    real_root = root.resolve()
    found: dict[str, list[int]] = {}
    for model_dir in sorted(entries):
        name = model_dir.name
        if not valid_model_name(name) or (names is not None and name not in names):
            continue
        if _resolves_under(model_dir, real_root) and model_dir.is_dir():
            found[name] = _complete_versions(model_dir, real_root)
    return found


def _complete_versions(model_dir: Path, real_root: Path) -> list[int]:
    try:
        children = list(model_dir.iterdir())
    except OSError:
        # Unreadable (or removed since we listed it): nothing servable; the caller reports the empty list.
        return []
    versions = []
    for child in children:
        version = parse_version(child.name)
        if version is None or not _resolves_under(child, real_root):
            continue
        if all(_is_file_under(child / file, real_root) for file in VERSION_FILES):
            versions.append(version)
    return sorted(versions)


def incomplete_versions(root: Path, name: str) -> dict[int, list[str]]:
    """Version directories of model ``name`` that lack a file: ``{version: [missing file names]}``.

    A publisher that does not rename into place leaves these while it writes; the caller reports them.
    """
    model_dir = version_dir(root, name, 1).parent
    real_root = root.resolve()
    try:
        children = list(model_dir.iterdir())
    except OSError:
        return {}
    incomplete: dict[int, list[str]] = {}
    for child in children:
        version = parse_version(child.name)
        if version is None or not _resolves_under(child, real_root) or not child.is_dir():
            continue
        missing = [file for file in VERSION_FILES if not _is_file_under(child / file, real_root)]
        if missing:
            incomplete[version] = missing
    return incomplete


def _resolves_under(path: Path, real_root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(real_root)
    except (OSError, RuntimeError):  # symlink loops raise RuntimeError before Python 3.13
        return False


def _is_file_under(path: Path, real_root: Path) -> bool:
    try:
        resolved = path.resolve()
        return resolved.is_relative_to(real_root) and resolved.is_file()
    except (OSError, RuntimeError):
        return False

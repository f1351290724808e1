"""A real, tiny file system for the disk-full tests."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tiny_filesystem(path: Path, size_kib: int) -> Iterator[Path]:
    """A real tmpfs of ``size_kib`` KiB mounted at ``path``. It needs root (CI runs as root); without it
    the test fails, saying so, rather than skipping."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {path} (run as root, as CI does): {mounted.stderr!r}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)

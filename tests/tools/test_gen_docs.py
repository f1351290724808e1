"""The reference pages are generated from the code, and the committed ones are current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from service.settings import Settings
from service.telemetry.metrics import Metrics
from tools import gen_docs

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", list(gen_docs.PAGES))
def test_the_committed_page_is_what_the_code_generates(path: Path) -> None:
    generated = gen_docs.PAGES[path]()
    assert path.read_text(encoding="utf-8") == generated, f"run `make docs-gen` and commit {path.name}"


def test_every_setting_is_a_row_with_its_description() -> None:
    page = gen_docs.settings_page()
    for name, field in Settings.model_fields.items():
        row = next(line for line in page.splitlines() if line.startswith(f"| `SERVE_{name.upper()}` |"))
        assert gen_docs._cell(field.description or "") in row


def test_every_registered_collector_is_a_row() -> None:
    page = gen_docs.metrics_page()
    registry = CollectorRegistry()
    Metrics(registry)
    names = {family.name for family in registry.collect()}
    assert len(names) >= 15
    for family in registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        assert f"| `{family.name}{suffix}` | {family.type} |" in page
        assert gen_docs._cell(family.documentation) in page


def test_check_fails_on_a_drifted_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "settings.md"
    stale.write_text(gen_docs.settings_page().replace("Most rows (samples) in one batch.", "Old text."))
    monkeypatch.setattr(gen_docs, "ROOT", tmp_path)
    monkeypatch.setattr(gen_docs, "PAGES", {stale: gen_docs.settings_page})
    assert gen_docs.main(["--check"]) == 1
    assert gen_docs.main([]) == 0
    assert gen_docs.main(["--check"]) == 0


def test_the_command_line_check_passes_on_the_committed_tree() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tools.gen_docs", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr

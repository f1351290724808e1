"""The README and the docs keep their promises: the front door stays short, every `make` target they name
exists, and the shipped examples they tell a newcomer to send are answered as the README shows."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z][a-z0-9-]*):", text, re.MULTILINE))


def test_the_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move detail into docs/"
    head = "\n".join(lines[:15])
    assert "make run" in head and "make test" in head


def test_every_docs_page_has_a_body(tmp_path: Path) -> None:
    """The site is built as CI builds it; every page says something, and the contributing page is
    CONTRIBUTING.md itself (included, not copied)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(tmp_path)]
    result = subprocess.run(build, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for page in sorted((ROOT / "docs").rglob("*.md")):
        html = (tmp_path / page.relative_to(ROOT / "docs")).with_suffix(".html").read_text(encoding="utf-8")
        article = html.split('<article class="md-content__inner md-typeset">', 1)[1].split("</article>", 1)[0]
        assert len(re.sub(r"<[^>]+>|\s+", " ", article).split()) > 30, f"{page} builds an almost empty page"
    contributing = (tmp_path / "contributing.html").read_text(encoding="utf-8")
    for heading in re.findall(r"^#+ (.+)$", (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8"), re.M):
        assert heading.split("`")[0].strip() in contributing, heading


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_make_target_named_exists(page: Path) -> None:
    # Commands: in a code span (`make docs`) or at the start of a line of a code block.
    pattern = r"(?:^|`|\$ )make ([a-z][a-z0-9-]*)"
    named = set(re.findall(pattern, page.read_text(encoding="utf-8"), re.MULTILINE))
    missing = named - makefile_targets()
    assert not missing, f"{page.name} names make targets the Makefile lacks: {sorted(missing)}"


def test_make_help_lists_every_documented_target() -> None:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    helped = set(re.findall(r"^## ([a-z][a-z0-9-]*):", text, re.MULTILINE))
    for target in ("help", "run", "test", "train-deps", "docs", "docs-serve", "docs-gen", "lint"):
        assert target in helped, f"make help does not list {target}"
    assert helped <= makefile_targets()


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = Settings(model_repository=str(ROOT / "models"), models=["mnist-cnn"], grpc_port=0)
    with TestClient(create_app(settings)) as c:
        yield c


def test_the_shipped_infer_body_is_a_seven(client: TestClient) -> None:
    body = (ROOT / "examples" / "infer-7.json").read_bytes()
    assert len(json.loads(body)["inputs"][0]["data"]) == 28 * 28
    answer = client.post(
        "/v2/models/mnist-cnn/infer", content=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 200, answer.text
    scores = answer.json()["outputs"][0]["data"]
    assert scores.index(max(scores)) == 7


def test_the_shipped_png_is_classified_as_a_seven(client: TestClient) -> None:
    png = (ROOT / "examples" / "digit-7.png").read_bytes()
    answer = client.post("/v2/models/mnist-cnn/classify?top_k=3", content=png)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["label"] == "7"


def test_the_readme_error_example_answers_as_shown(client: TestClient) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    request = re.search(r"-d '(\{\"inputs\":\[\{\"name\":\"image\".*?\})'\n", readme)
    shown = re.search(r"# 400 (\{\"error\":.*\})\n", readme)
    assert request and shown
    answer = client.post("/v2/models/mnist-cnn/infer", content=request.group(1))
    assert answer.status_code == 400
    assert answer.json() == json.loads(shown.group(1))

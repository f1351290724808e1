"""The rollout page at ``/rollout`` in a real headless Chromium, against a real service with a rollout."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.helpers.data import MODELS
from tests.helpers.rolloutdrive import infer_body
from tests.helpers.server import RunningService, running_service
from tests.helpers.variants import publish_variant

pytestmark = pytest.mark.slow

NAME = "mnist-mlp"
ADMIN = "admin-token-0123456789"


@pytest.fixture
def rolling(tmp_path: Path) -> Iterator[RunningService]:
    publish_variant(MODELS / NAME / "1", tmp_path / "models", NAME, 1)
    publish_variant(MODELS / NAME / "1", tmp_path / "models", NAME, 2, candidate=True)
    env = {"SERVE_MODEL_REPOSITORY": str(tmp_path / "models"), "SERVE_ADMIN_TOKEN": ADMIN}
    with running_service(tmp_path, env=env) as service:
        yield service


def test_the_page_shows_both_versions_the_evidence_and_the_decision(
    browser: Browser, rolling: RunningService
) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    stages = [{"kind": "canary", "weight": 0.5, "min_requests": 1_000_000}]
    started = httpx.post(
        f"{rolling.url}/v2/repository/models/{NAME}/rollout",
        json={"candidate": "2", "stages": stages},
        headers=auth,
        timeout=30,
    )
    assert started.status_code == 200, started.text
    for n in range(40):
        assert httpx.post(f"{rolling.url}/v2/models/{NAME}/infer", json=infer_body(n), timeout=10).is_success
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{rolling.url}/rollout?model={NAME}")
        expect(page.locator("#state")).to_have_text("canary")
        expect(page.locator("#weight")).to_have_text("50 %")
        expect(page.locator("#champion")).to_have_text("1")
        expect(page.locator("#candidate")).to_have_text("2")
        rows = page.locator("#evidence tr")
        expect(rows).to_have_count(2)
        expect(rows.nth(0)).to_contain_text("champion (v1)")
        expect(rows.nth(1)).to_contain_text("candidate (v2)")
        # 40 unversioned requests, split between the two at 50 %: both rows count some, once folded.
        expect(page.locator("#evidence tr[data-role=candidate] td").nth(1)).not_to_have_text(
            "0", timeout=10_000
        )
        httpx.post(f"{rolling.url}/v2/repository/models/{NAME}/rollout/rollback", headers=auth, timeout=30)
        expect(page.locator("#state")).to_have_text("rolled_back", timeout=10_000)
        expect(page.locator("#reason")).to_have_text("operator: rollback")
        expect(page.locator("#history li").first).to_contain_text(re.compile(r"rollback \(operator, v2\)"))
    finally:
        context.close()
    assert errors == []

"""Fixtures for the browser tests: the real service on the shipped models, one headless Chromium.

Chromium is Debian's (``apt-get install chromium``; ``make test`` installs it), driven by Playwright
through ``executable_path``, so no browser is downloaded.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.helpers.data import ROOT
from tests.helpers.server import RunningService, running_service

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts" / "web"
#: Small enough that a test can upload an image over it without sending megabytes.
MAX_IMAGE_PIXELS = 1_000_000


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    env = {"SERVE_MODELS": "mnist-cnn,fashion-cnn", "SERVE_MAX_IMAGE_PIXELS": str(MAX_IMAGE_PIXELS)}
    with running_service(tmp_path_factory.mktemp("web-serve"), env=env) as running:
        yield running


@pytest.fixture(scope="session")
def shipped_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """Every shipped model, as ``make run`` serves them: cifar10-cnn comes first alphabetically."""
    with running_service(tmp_path_factory.mktemp("web-serve-all")) as running:
        yield running


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    assert executable is not None, "chromium is not installed (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@dataclass
class Visit:
    """A page of the service in a fresh browser context, with everything it logged and fetched."""

    page: Page
    service: RunningService
    console: list[ConsoleMessage] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def open(self, path: str = "/") -> None:
        """Load the page and wait until it has listed the models and fetched the selected one."""
        self.page.goto(self.service.url + path)
        self.settle()
        expect(self.page.locator("#model")).to_be_enabled()  # only once the models are listed

    def settle(self) -> None:
        """Wait until no request of the page is pending (the results panel is not aria-busy)."""
        self.page.wait_for_selector("#results[aria-busy=false]", state="attached")

    def errors(self) -> list[str]:
        return [m.text for m in self.console if m.type == "error"] + self.page_errors


@pytest.fixture
def visit(browser: Browser, service: RunningService) -> Iterator[Visit]:
    yield from _visit(browser, service)


@pytest.fixture
def visit_shipped(browser: Browser, shipped_service: RunningService) -> Iterator[Visit]:
    yield from _visit(browser, shipped_service)


def _visit(browser: Browser, service: RunningService) -> Iterator[Visit]:
    context = browser.new_context(viewport={"width": 1100, "height": 860})
    page = context.new_page()
    page.set_default_timeout(15_000)
    result = Visit(page, service)
    page.on("console", lambda message: result.console.append(message))
    page.on("pageerror", lambda error: result.page_errors.append(str(error)))
    page.on("request", lambda request: result.requests.append(request.url))
    try:
        yield result
    finally:
        context.close()

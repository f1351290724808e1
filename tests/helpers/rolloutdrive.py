"""Drive a rollout on a real service process: a client streaming unversioned requests, labelled feedback.

    with Stream(service.url, "mnist-mlp") as stream:       # a thread of keep-alive HTTP requests
        outcome = feed_until(service.url, "mnist-mlp", "rolled_back", token, limit=400)
    assert stream.failures == []

Used by ``tests/service/core/test_rollout_process.py`` and ``bench/rollout.py``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
import numpy as np

from tests.helpers.data import load_digits
from tests.helpers.variants import png


def infer_body(index: int) -> dict[str, Any]:
    images, _ = load_digits()
    data = images[index].ravel().tolist()
    return {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": data}]}


class Stream:
    """Unversioned infer requests from one thread until closed (at most ``limit_s`` seconds), each with an
    ``X-Routing-Key`` out of ``keys``; counts answers by version and keeps every failure. Sticky routing
    splits keys, not requests: with 20 keys a 10 % canary gets no key at all about one time in eight
    (0.9 ** 20), and its stage would wait for candidate requests forever; 200 keys make that 0.9 ** 200."""

    def __init__(self, url: str, model: str, *, keys: int = 200, limit_s: float = 120.0) -> None:
        self.url, self.model, self.keys, self.limit_s = url, model, keys, limit_s
        self.versions: Counter[str] = Counter()
        self.by_key: dict[str, list[str]] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    @property
    def requests(self) -> int:
        return sum(self.versions.values()) + len(self.failures)

    def wait_requests(self, count: int, timeout_s: float = 30.0) -> None:
        """Poll (bounded) until the stream has sent ``count`` requests; AssertionError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.requests < count:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise AssertionError(f"the stream sent {self.requests} of {count} requests")
            time.sleep(0.01)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        bodies = [infer_body(i) for i in range(32)]
        with httpx.Client(base_url=self.url, timeout=30) as client:
            n = 0
            while not self._stop.is_set() and time.monotonic() < deadline:
                key = f"client-{n % self.keys}"
                try:
                    answer = client.post(
                        f"/v2/models/{self.model}/infer", json=bodies[n % 32], headers={"X-Routing-Key": key}
                    )
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                else:
                    if answer.status_code == 200:
                        version = answer.json()["model_version"]
                        self.versions[version] += 1
                        self.by_key.setdefault(key, []).append(version)
                    else:
                        self.failures.append(f"{answer.status_code}: {answer.text[:200]}")
                n += 1


@dataclass
class Outcome:
    """Where a rollout got to: its state, the labelled items sent and the seconds it took."""

    state: dict[str, Any]
    items: int
    seconds: float
    stages: list[tuple[str, int, float]] = field(default_factory=list)  # (state, items, seconds) on change


def feed_until(
    url: str,
    model: str,
    state: str,
    token: str,
    *,
    start: int = 0,
    limit: int = 600,
    timeout_s: float = 120.0,
) -> Outcome:
    """Send MNIST test digits ``start...`` with their true labels as feedback, one at a time, until the
    model's rollout is in ``state`` (AssertionError after ``limit`` items or ``timeout_s``)."""
    images, labels = load_digits()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/png"}
    began = time.monotonic()
    stages: list[tuple[str, int, float]] = []
    seen = ""
    with httpx.Client(base_url=url, timeout=30) as client:
        for sent, index in enumerate(range(start, start + limit), 1):
            stored = client.post(
                f"/v2/models/{model}/feedback",
                params={"label": str(labels[index])},
                content=png(images[index]),
                headers=headers,
            )
            if stored.status_code != 201:
                raise AssertionError(f"feedback refused: {stored.status_code} {stored.text}")
            current: dict[str, Any] = client.get(f"/v2/models/{model}/rollout").json()
            if current["state"] != seen:
                seen = current["state"]
                stages.append((seen, sent, round(time.monotonic() - began, 2)))
            if current["state"] == state:
                return Outcome(current, sent, time.monotonic() - began, stages)
            if time.monotonic() - began > timeout_s:
                break
    raise AssertionError(f"rollout not {state} after {limit} items: {current}")


def wait_state(url: str, model: str, state: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """Poll the rollout (bounded) until it is in ``state``."""
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = httpx.get(f"{url}/v2/models/{model}/rollout", timeout=10).json()
        if body["state"] == state:
            return body
        time.sleep(0.1)
    raise AssertionError(f"rollout not {state} after {timeout_s} s: {body}")


def sticky(by_key: dict[str, list[str]]) -> bool:
    """Whether every key's answers changed version at most once (a canary share only grows)."""
    return all(int(np.count_nonzero(np.diff([int(v) for v in seq]))) <= 1 for seq in by_key.values())

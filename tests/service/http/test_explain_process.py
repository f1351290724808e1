"""Explanations from the real server process, with real clients: the shipped digit model's attribution
passes a deletion test, and a client that goes away stops its explanation."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.data import load_digits
from tests.helpers.server import RunningService, running_service

pytestmark = pytest.mark.slow
MODEL = "mnist-cnn"
DELETED = range(0, 201, 20)  # pixels removed at each step of the deletion curve (a quarter of 784 at most)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    env = {"SERVE_MODELS": MODEL, "SERVE_EXPLAIN_MAX_ROWS": "100000", "SERVE_GRPC_PORT": "0"}
    with running_service(tmp_path_factory.mktemp("explain"), env=env) as running:
        yield running


def tensor(images: np.ndarray) -> dict[str, Any]:
    shape = [len(images), 28, 28, 1]
    return {
        "inputs": [{"name": "image", "shape": shape, "datatype": "FP32", "data": images.ravel().tolist()}]
    }


def deletion_curve(client: httpx.Client, image: np.ndarray, order: np.ndarray, class_id: int) -> np.ndarray:
    """The class's score as the pixels of ``order`` are set to black (the digit model's baseline), in
    steps of :data:`DELETED`, computed by the service's infer route."""
    rows = []
    for n in DELETED:
        row = image.copy().ravel()
        row[order[:n]] = 0
        rows.append(row.reshape(28, 28, 1))
    response = client.post(f"/v2/models/{MODEL}/infer", json=tensor(np.stack(rows)))
    assert response.status_code == 200, response.text
    return np.array(response.json()["outputs"][0]["data"]).reshape(len(rows), -1)[:, class_id]


@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_deleting_the_most_attributed_pixels_drops_the_score_fastest(
    service: RunningService, method: str
) -> None:
    images, _ = load_digits("mnist")
    areas: list[tuple[float, float, float]] = []
    with httpx.Client(base_url=service.url, timeout=60) as client:
        for index in range(8):
            image = images[index].astype(np.float32).reshape(28, 28, 1)
            answer = client.post(
                f"/v2/models/{MODEL}/explain", params={"method": method}, json=tensor(image[None])
            )
            assert answer.status_code == 200, answer.text
            body = answer.json()
            attribution, class_id = np.array(body["attribution"]).ravel(), body["class_id"]
            rng = np.random.default_rng(index)
            ink = np.flatnonzero(image.ravel() > 0)
            curves = (
                deletion_curve(client, image, np.argsort(-attribution, kind="stable"), class_id),
                deletion_curve(client, image, rng.permutation(784), class_id),  # random pixels
                deletion_curve(client, image, rng.permutation(ink), class_id),  # random pixels of the digit
            )
            areas.append((curves[0].mean(), curves[1].mean(), curves[2].mean()))
    attributed, random_pixels, random_ink = np.mean(areas, axis=0)
    # Measured on 2026-12-06: occlusion 0.29, RISE 0.20, random pixels 0.97, random digit pixels 0.39.
    assert attributed < 0.5 * random_pixels
    assert attributed < 0.85 * random_ink


def explanation_counts(client: httpx.Client) -> dict[str, float]:
    counts = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "explanations_total":
                counts[sample.labels["result"]] = sample.value
            elif sample.name in ("explanation_rows_total", "inference_rows_total", "inference_queue_rows"):
                counts[sample.name] = counts.get(sample.name, 0.0) + sample.value
    return counts


def wait_for(client: httpx.Client, what: str, condition: Any, timeout: float = 30.0) -> dict[str, float]:
    """Bounded polling of /metrics until ``condition(counts)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        counts = explanation_counts(client)
        if condition(counts):
            return counts
        assert time.monotonic() < deadline, f"{what}: never happened ({counts})"
        time.sleep(0.01)


def test_a_client_that_goes_away_stops_its_explanation(service: RunningService, tmp_path: Path) -> None:
    masks = 50_000  # about ten seconds of rows on two cores: far longer than the test takes to hang up
    images, _ = load_digits("mnist")
    body = httpx.Request("POST", "http://x", json=tensor(images[:1].astype(np.float32))).content
    head = (
        f"POST /v2/models/{MODEL}/explain?method=rise&masks={masks} HTTP/1.1\r\nHost: {service.address}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with httpx.Client(base_url=service.url, timeout=30) as client:
        before = explanation_counts(client)
        with socket.create_connection(("127.0.0.1", service.port), timeout=30) as raw:
            raw.sendall(head + body)
            started = before.get("inference_rows_total", 0.0) + 1000  # its rows are being computed
            wait_for(client, "the explanation's rows", lambda c: c.get("inference_rows_total", 0) > started)
        after = wait_for(
            client, "the cancellation", lambda c: c.get("cancelled", 0) > before.get("cancelled", 0)
        )
        assert after["cancelled"] == before.get("cancelled", 0) + 1
        assert after.get("ok", 0) == before.get("ok", 0)
        # It stopped part way, and none of its rows waits any more: a running explanation always keeps
        # a job queued while a batch computes, so its end is the empty queue.
        run = after["explanation_rows_total"] - before.get("explanation_rows_total", 0)
        assert 1000 < run < masks
        assert after["inference_queue_rows"] == 0
        assert client.get(f"/v2/models/{MODEL}/ready").status_code == 200

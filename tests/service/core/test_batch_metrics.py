"""Metrics: what the batcher reports lands in the right series, and the hold time through the real app."""

from __future__ import annotations

import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.settings import Settings
from service.telemetry.metrics import Metrics
from tests.helpers.data import MODELS, load_digits

MV = {"model": "m", "version": "1"}


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text, name).get(tuple(sorted(labels.items())))


def test_batch_wait_histogram_has_a_bucket_for_not_held_at_all() -> None:
    registry = CollectorRegistry()
    observer = Metrics(registry).for_version("m", 1)
    for seconds in (0.0, 0.0, 0.0003, 0.004):
        observer.on_wait(seconds)
    text = generate_latest(registry).decode()
    name = "inference_batch_wait_seconds"
    assert value(text, f"{name}_bucket", le="0.0", **MV) == 2
    assert value(text, f"{name}_bucket", le="0.0005", **MV) == 3
    assert value(text, f"{name}_bucket", le="0.005", **MV) == 4
    assert value(text, f"{name}_count", **MV) == 4
    assert value(text, f"{name}_sum", **MV) == pytest.approx(0.0043)


def test_queue_rows_gauge_shows_the_latest_count_and_goes_on_unload() -> None:
    registry = CollectorRegistry()
    observer = Metrics(registry).for_version("m", 1)
    assert value(generate_latest(registry).decode(), "inference_queue_rows", **MV) == 0
    for rows in (3, 7, 2):
        observer.on_queue_rows(rows)
    assert value(generate_latest(registry).decode(), "inference_queue_rows", **MV) == 2
    observer.remove()
    assert value(generate_latest(registry).decode(), "inference_queue_rows", **MV) is None


@pytest.mark.parametrize("wait", ["adaptive", "fixed"])
def test_lone_requests_are_held_only_by_the_fixed_wait(wait: str) -> None:
    images, _ = load_digits("mnist")
    # 20 ms: long enough that a held request shows, short enough that the fixed wait costs little here.
    settings = Settings(
        model_repository=MODELS, models=["mnist-mlp"], max_queue_delay_us=20_000, batch_wait=wait
    )
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1], "data": []}]}
    with TestClient(create_app(settings)) as c:
        for image in images[:3]:
            body["inputs"][0]["data"] = image.ravel().tolist()  # type: ignore[index]
            assert c.post("/v2/models/mnist-mlp/infer", content=orjson.dumps(body)).status_code == 200
        text = c.get("/metrics").text
    mv = {"model": "mnist-mlp", "version": "1"}
    assert value(text, "inference_batch_wait_seconds_count", **mv) == 3
    not_held = value(text, "inference_batch_wait_seconds_bucket", le="0.0", **mv)
    assert not_held == (3 if wait == "adaptive" else 0)

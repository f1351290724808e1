"""service.telemetry.metrics: every metric on an injected registry, per-version children, Triton
statistics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from service.telemetry.metrics import STATUSES, Duration, Metrics, VersionStats


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_a_fresh_registry_per_instance() -> None:
    a, b = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    a.for_version("m", 1).observe_request("ok", 0.01)
    ok = {"model": "m", "version": "1", "status": "ok", "protocol": "http"}
    assert value(a.registry, "inference_requests_total", **ok) == 1
    assert value(b.registry, "inference_requests_total", **ok) is None


def test_requests_rows_batches_and_queue_are_counted_separately() -> None:
    metrics = Metrics(CollectorRegistry())
    version = metrics.for_version("m", 2)
    mv = {"model": "m", "version": "2"}
    for status in STATUSES:
        version.observe_request(status, 0.002)
    version.on_dequeue(0.001)
    version.on_dequeue(0.003)
    version.on_batch(rows=5, compute_seconds=0.004)
    version.on_queue_rows(7)
    r = metrics.registry
    http = {**mv, "protocol": "http"}
    assert all(value(r, "inference_requests_total", **http, status=s) == 1 for s in STATUSES)
    assert value(r, "inference_request_duration_seconds_count", **http) == len(STATUSES)
    assert value(r, "inference_rows_total", **mv) == 5
    assert value(r, "inference_batches_total", **mv) == 1
    assert value(r, "inference_batch_size_sum", **mv) == 5
    assert value(r, "inference_queue_duration_seconds_count", **mv) == 2
    assert value(r, "inference_compute_duration_seconds_sum", **mv) == 0.004
    assert value(r, "inference_queue_rows", **mv) == 7
    stats = version.stats
    assert (stats.success.count, stats.fail.count, stats.queue.count) == (1, len(STATUSES) - 1, 2)


def test_removing_a_version_drops_its_gauges_but_keeps_its_counters() -> None:
    metrics = Metrics(CollectorRegistry())
    version = metrics.for_version("m", 1)
    version.set_served("CPUExecutionProvider")
    version.on_queue_rows(3)
    version.observe_request("ok", 0.001)
    info = {"model": "m", "version": "1", "provider": "CPUExecutionProvider"}
    assert value(metrics.registry, "model_info", **info) == 1
    version.remove()
    assert value(metrics.registry, "model_info", **info) is None
    assert value(metrics.registry, "inference_queue_rows", model="m", version="1") is None
    ok = {"model": "m", "version": "1", "status": "ok", "protocol": "http"}
    assert value(metrics.registry, "inference_requests_total", **ok) == 1
    version.remove()  # idempotent


def test_requests_are_labelled_by_protocol_and_grpc_series_appear_with_the_first_call() -> None:
    metrics = Metrics(CollectorRegistry())
    version = metrics.for_version("m", 1)
    r, mv = metrics.registry, {"model": "m", "version": "1"}
    # An HTTP-only process exports its series from the start, as before the label existed.
    assert all(value(r, "inference_requests_total", **mv, status=s, protocol="http") == 0 for s in STATUSES)
    assert value(r, "inference_requests_total", **mv, status="ok", protocol="grpc") is None
    assert value(r, "inference_request_duration_seconds_count", **mv, protocol="grpc") is None
    version.observe_request("ok", 0.001, protocol="grpc")
    version.observe_request("ok", 0.001, protocol="grpc")
    version.observe_request("timeout", 0.002, protocol="grpc")
    version.observe_request("ok", 0.001)
    assert value(r, "inference_requests_total", **mv, status="ok", protocol="grpc") == 2
    assert value(r, "inference_requests_total", **mv, status="timeout", protocol="grpc") == 1
    assert value(r, "inference_requests_total", **mv, status="ok", protocol="http") == 1
    assert value(r, "inference_request_duration_seconds_count", **mv, protocol="grpc") == 3
    assert value(r, "inference_request_duration_seconds_count", **mv, protocol="http") == 1
    assert version.stats.success.count == 3 and version.stats.fail.count == 1  # Triton's stats: both


def test_statistics_in_tritons_shape() -> None:
    stats = VersionStats()
    stats.on_batch(4, 0.002)
    stats.on_batch(4, 0.001)
    stats.on_batch(1, 0.0005)
    stats.success.add(0.01)
    document = stats.as_json("m", "3")
    assert (document["name"], document["version"]) == ("m", "3")
    assert (document["inference_count"], document["execution_count"]) == (9, 3)
    assert document["inference_stats"]["compute_infer"] == {"count": 3, "ns": 3_500_000}
    assert document["inference_stats"]["success"] == {"count": 1, "ns": 10_000_000}
    assert [b["batch_size"] for b in document["batch_stats"]] == [1, 4]
    assert document["batch_stats"][1]["compute_infer"]["count"] == 2
    assert document["last_inference"] > 0


def test_duration_counts_in_nanoseconds() -> None:
    d = Duration()
    d.add(1.5)
    d.add(0.25)
    assert d.as_json() == {"count": 2, "ns": 1_750_000_000}

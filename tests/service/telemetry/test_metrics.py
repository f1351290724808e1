"""service.telemetry.metrics: every metric on an injected registry, per-version children, Triton
statistics."""

from __future__ import annotations

import math
import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from service.telemetry.metrics import (
    LATENCY_BUCKETS,
    STATUSES,
    Duration,
    LoopCounter,
    LoopHistogram,
    Metrics,
    VersionStats,
)


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


def test_loop_metrics_expose_pinned_counts_and_buckets() -> None:
    metrics = Metrics(CollectorRegistry())
    version = metrics.for_version("m", 4)
    r, mv = metrics.registry, {"model": "m", "version": "4"}
    http = {**mv, "protocol": "http"}
    # 10 requests: 7 ok, 3 timeouts; durations on, between and beyond the bucket bounds.
    durations = [0.0004, 0.0005, 0.0007, 0.001, 0.003, 0.003, 0.05, 0.3, 7.0, 12.0]
    for n, seconds in enumerate(durations):
        version.observe_request("ok" if n < 7 else "timeout", seconds)
    assert value(r, "inference_requests_total", **http, status="ok") == 7
    assert value(r, "inference_requests_total", **http, status="timeout") == 3
    assert value(r, "inference_request_duration_seconds_count", **http) == 10
    assert value(r, "inference_request_duration_seconds_sum", **http) == pytest.approx(sum(durations))
    buckets = {
        le: value(r, "inference_request_duration_seconds_bucket", **http, le=le)
        for le in ("0.0005", "0.001", "0.002", "0.005", "0.05", "0.1", "0.5", "5.0", "10.0", "+Inf")
    }
    assert buckets == {  # cumulative; a value on a bound is in that bound's bucket
        "0.0005": 2,
        "0.001": 4,
        "0.002": 4,
        "0.005": 6,
        "0.05": 7,
        "0.1": 7,
        "0.5": 8,
        "5.0": 8,
        "10.0": 9,
        "+Inf": 10,
    }
    for rows in (32, 32, 5):
        version.on_batch(rows, 0.004)
        version.on_wait(0.0)
    assert value(r, "inference_rows_total", **mv) == 69
    assert value(r, "inference_batches_total", **mv) == 3
    assert value(r, "inference_batch_size_bucket", **mv, le="4.0") == 0
    assert value(r, "inference_batch_size_bucket", **mv, le="8.0") == 1
    assert value(r, "inference_batch_size_bucket", **mv, le="32.0") == 3
    assert value(r, "inference_batch_size_sum", **mv) == 69
    assert value(r, "inference_batch_wait_seconds_bucket", **mv, le="0.0") == 3
    assert value(r, "inference_compute_duration_seconds_count", **mv) == 3
    assert value(r, "inference_requests_total", **http, status="error") == 0
    # Triton's statistics keep their numbers.
    assert (version.stats.success.count, version.stats.fail.count) == (7, 3)
    assert (version.stats.inference_count, version.stats.execution_count) == (69, 3)


def test_loop_metrics_export_what_prometheus_clients_own_classes_export() -> None:
    def exposition(counter: type[Counter], histogram: type[Histogram]) -> str:
        registry = CollectorRegistry()
        c = counter("c_total", "A counter.", ["x"], registry=registry)
        h = histogram("h_seconds", "A histogram.", ["x"], buckets=LATENCY_BUCKETS, registry=registry)
        for n in range(500):
            c.labels(str(n % 3)).inc()
            c.labels("2").inc(2.5)
            on_a_bound = LATENCY_BUCKETS[n % len(LATENCY_BUCKETS)]
            h.labels(str(n % 2)).observe((n % 37) / 1000 if n % 5 else on_a_bound)
        h.labels("1").observe(math.inf)
        text = generate_latest(registry).decode()
        return re.sub(r"(_created\{[^}]*\}) \S+", r"\1", text)  # creation times differ

    assert exposition(LoopCounter, LoopHistogram) == exposition(Counter, Histogram)


def test_loop_metrics_refuse_what_they_do_not_keep() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("c_total", "A counter.", ["x"], registry=registry).labels("a")
    histogram = LoopHistogram("h", "A histogram.", registry=registry)
    with pytest.raises(ValueError, match="non-negative"):
        counter.inc(-1)
    with pytest.raises(ValueError, match="exemplar"):
        counter.inc(1, exemplar={"trace_id": "1"})
    with pytest.raises(ValueError, match="exemplar"):
        histogram.observe(1.0, exemplar={"trace_id": "1"})
    histogram.observe(math.nan)  # in no bucket, as with prometheus_client's Histogram
    assert registry.get_sample_value("h_count") == 0
    counter.reset()
    assert registry.get_sample_value("c_total", {"x": "a"}) == 0

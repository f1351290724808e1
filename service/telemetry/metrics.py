"""Prometheus metrics, all in one place, registered on an injected registry.

Names are fixed by the design contract (section 6). Requests, rows and batches are counted
separately; time in the queue, time a batch was held open for more rows, and time computing are separate
histograms. Nothing here is computed per request that can be read when Prometheus scrapes.

The series updated per request or per batch (``inference_requests_total``, ``inference_rows_total``,
``inference_batches_total`` and the five per-version histograms) are :class:`LoopCounter` and
:class:`LoopHistogram`: prometheus_client's own classes, exported by its own code, whose children count
with a plain add (a histogram finds its bucket by ``bisect``) instead of taking a lock per update. They are
updated only on the event loop's thread (the transports and the batchers' consumers run there; a batch's
result comes back to the loop before it is counted), so no two updates race; a scrape on another thread
reads each value whole and at worst one observation early or late between ``_count`` and ``_sum``.
Anything that would update them from another thread must use a stock :class:`~prometheus_client.Counter`
or :class:`~prometheus_client.Histogram` instead. They do not support prometheus_client's multiprocess
mode, which the service does not use (``--workers N`` runs one registry per process).

One module of this size on purpose: every metric is registered here and nowhere else, so
``docs/reference/metrics.md`` is generated from one place (``tools/gen_docs.py``).
"""

from __future__ import annotations

import contextlib
import time
from bisect import bisect_left
from collections import defaultdict
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from service.rollout.policy import STATE_CODES

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# From "not held at all" through the default max_queue_delay_us (500 us) to far beyond it.
WAIT_BUCKETS = (0.0, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)
STATUSES = ("ok", "bad_request", "rejected", "timeout", "error")
#: Why a feedback item for a served model was refused (the ``result`` of ``feedback_items_total``).
FEEDBACK_REASONS = (
    "unauthorized",  # no or wrong bearer token
    "bad_label",  # not one of the model's labels
    "bad_image",  # not a PNG or JPEG, corrupt, too large, or nothing the model could read
    "quota_items",
    "quota_bytes",
    "storage_full",
    "storage_error",
    "unavailable",  # draining, queue full, deadline
)
#: Why the native gRPC listener closed a connection or refused a call itself
#: (``grpc_refused_total{reason}``; service/grpc/native.py).
GRPC_REFUSAL_REASONS = (
    "preface_timeout",  # a connection that sent no HTTP/2 preface within header_timeout_s (closed)
    "protocol_error",  # a connection that broke HTTP/2 (closed with GOAWAY)
    "too_large",  # a call whose message is over max_body_bytes (RESOURCE_EXHAUSTED)
    "connection_busy",  # a call that would pass the connection's cap on unfinished messages
    "not_grpc",  # a request that is not a gRPC call (405 or 415)
)
#: Why the HTTP server closed a connection itself (``http_connections_closed_total{reason}``).
CONNECTION_REASONS = (
    "idle_timeout",  # no byte of a request within header_timeout_s
    "header_timeout",  # a header block begun but not finished within header_timeout_s (408)
    "body_timeout",  # a body not finished within body_timeout_s of its header block (408)
    "header_too_large",  # header block over max_header_bytes (431)
    "bad_request",  # malformed request, Host or version framing (400)
    "version",  # HTTP major version other than 1 (505)
    "evicted",  # the longest-idle connection, closed to admit a new one at max_connections
    "over_capacity",  # a new connection at max_connections with none idle (503)
)
#: The ``result`` of ``explanations_total``: the request statuses, and ``cancelled`` (the client left).
EXPLAIN_RESULTS = (*STATUSES, "cancelled")
#: The ``protocol`` label of the request metrics: HTTP's series exist from the start, gRPC's from its
#: first call (so an HTTP-only process exports exactly what it did before the label).
PROTOCOLS = ("http", "grpc")


class _Value:
    """One number with the interface prometheus_client's exporting code reads (``get``,
    ``get_exemplar``), without its lock: see the module docstring for the one-thread rule."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float) -> None:
        self.value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self.value = value

    def set_exemplar(self, exemplar: Any) -> None:
        raise ValueError("exemplars are not kept by this metric")

    def get(self) -> float:
        return self.value

    def get_exemplar(self) -> None:
        return None


class LoopCounter(Counter):
    """A :class:`~prometheus_client.Counter` whose children add without a lock (one thread: the event
    loop's; module docstring). Exported exactly as a ``Counter``, ``_created`` included."""

    def _metric_init(self) -> None:
        self._value = _Value()
        self._created = time.time()

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        if exemplar:
            raise ValueError("exemplars are not kept by this metric")
        self._value.value += amount


class LoopHistogram(Histogram):
    """A :class:`~prometheus_client.Histogram` whose children find the bucket by ``bisect`` and add
    without a lock (one thread: the event loop's; module docstring). Exported exactly as a
    ``Histogram``: the same cumulative ``_bucket`` series, ``_count``, ``_sum`` and ``_created``."""

    def _metric_init(self) -> None:
        self._created = time.time()
        self._sum = _Value()
        self._buckets = [_Value() for _ in self._upper_bounds]

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if exemplar:
            raise ValueError("exemplars are not kept by this metric")
        self._sum.value += amount
        if amount == amount:  # NaN is in no bucket, as in prometheus_client
            # The first upper bound >= amount: the bucket ``amount <= bound`` picks; the last is +Inf.
            self._buckets[bisect_left(self._upper_bounds, amount)].value += 1


def _by_reason(
    name: str, documentation: str, reasons: tuple[str, ...], registry: CollectorRegistry
) -> Counter:
    """A counter labelled ``reason``, every reason's series exported from the start (at 0)."""
    counter = Counter(name, documentation, ["reason"], registry=registry)
    for reason in reasons:
        counter.labels(reason)
    return counter


class Metrics:
    """Every metric the service exports, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        mv = ["model", "version"]
        self.requests = LoopCounter(
            "inference_requests_total",
            "Inference requests by outcome and protocol.",
            [*mv, "status", "protocol"],
            registry=registry,
        )
        self.rows = LoopCounter("inference_rows_total", "Rows (samples) computed.", mv, registry=registry)
        self.batches = LoopCounter("inference_batches_total", "Batches computed.", mv, registry=registry)
        self.request_duration = LoopHistogram(
            "inference_request_duration_seconds",
            "End-to-end inference request time, parse to response, by protocol.",
            [*mv, "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_duration = LoopHistogram(
            "inference_queue_duration_seconds",
            "Time a request (or chunk) waited in the batch queue.",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.compute_duration = LoopHistogram(
            "inference_compute_duration_seconds",
            "Time onnxruntime spent on one batch.",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_wait = LoopHistogram(
            "inference_batch_wait_seconds",
            "Time a batch was held open for more rows before computing (0: it went at once).",
            mv,
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.batch_size = LoopHistogram(
            "inference_batch_size", "Rows per computed batch.", mv, buckets=BATCH_BUCKETS, registry=registry
        )
        self.queue_rows = Gauge(
            "inference_queue_rows", "Rows waiting in the batch queue.", mv, registry=registry
        )
        self.model_info = Gauge(
            "model_info", "1 for each served model version.", [*mv, "provider"], registry=registry
        )
        self.load_total = Counter(
            "model_load_total", "Model version loads by result.", ["model", "result"], registry=registry
        )
        self.load_duration = Histogram(
            "model_load_duration_seconds",
            "Time to load, check and warm up one model version.",
            ["model"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=registry,
        )
        self.repository_up = Gauge(
            "model_repository_up",
            "1 while the model repository answered its last scan, 0 after a failure (docs/cluster.md).",
            registry=registry,
        )
        self.repository_errors = Counter(
            "model_repository_errors",
            "Scans and downloads of the model repository that failed (unreachable, denied).",
            registry=registry,
        )

        self.feedback = Counter(
            "feedback_items_total",
            "Feedback items by outcome: result is 'accepted' or the reason for refusing.",
            ["model", "label", "result"],
            registry=registry,
        )
        self.feedback_stored_items = Gauge(
            "feedback_stored_items", "Feedback items stored per model.", ["model"], registry=registry
        )
        self.feedback_stored_bytes = Gauge(
            "feedback_stored_bytes", "Bytes of feedback images per model.", ["model"], registry=registry
        )
        self.explanations = Counter(
            "explanations_total",
            "Explanations (POST .../explain) by model, method and result.",
            ["model", "method", "result"],
            registry=registry,
        )
        self.explanation_rows = Counter(
            "explanation_rows_total",
            "Perturbed rows that explanations ran through the batchers (also in inference_rows_total).",
            ["model", "method"],
            registry=registry,
        )

        self.connections_closed = _by_reason(
            "http_connections_closed_total",
            "HTTP connections the server closed or refused before answering a request, by reason.",
            CONNECTION_REASONS,
            registry,
        )
        self.grpc_connections = Gauge(
            "grpc_connections_open",
            "Client connections open on the native gRPC listener (SERVE_GRPC_SERVER=native).",
            registry=registry,
        )
        self.grpc_refused = _by_reason(
            "grpc_refused_total",
            "Connections the native gRPC listener closed, and calls it refused, by itself, by reason.",
            GRPC_REFUSAL_REASONS,
            registry,
        )

        self.rollout_state = Gauge(
            "rollout_state",
            "Rollout state per model: 0 idle, 1 shadow, 2 canary, 3 paused, 4 promoted, 5 rolled back.",
            ["model"],
            registry=registry,
        )
        self.rollout_weight = Gauge(
            "rollout_weight",
            "The candidate's share of unversioned requests, 0..1.",
            ["model"],
            registry=registry,
        )
        self.rollout_decisions = Counter(
            "rollout_decisions_total",
            "Rollout decisions: start, advance, promote, rollback, pause, resume.",
            ["model", "decision"],
            registry=registry,
        )
        self.rollout_paired = Counter(
            "rollout_paired_feedback_total",
            "Labelled feedback items scored by both versions of a rollout, per version and result.",
            ["model", "version", "result"],
            registry=registry,
        )
        self.rollout_shadow = Counter(
            "rollout_shadow_total",
            "Shadow computations on a candidate: agree, disagree (top label), error, skipped.",
            ["model", "result"],
            registry=registry,
        )

        self.rollout_evidence = Counter(
            "rollout_evidence",
            "A rollout's evidence gathered by this process, by kind (docs/rollout.md): "
            "{champion,candidate}_{requests,errors,labelled,correct}, champion_only, candidate_only, "
            "shadow_{compared,agreed,errors,skipped}.",
            ["model", "rollout", "kind"],
            registry=registry,
        )
        self.rollout_latency = Histogram(
            "rollout_latency_seconds",
            "Latency of each version's requests during a rollout (role: champion, candidate).",
            ["model", "rollout", "role"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def observe_explanation(self, model: str, method: str, result: str, rows: int) -> None:
        """Count one explanation: ``result`` in :data:`EXPLAIN_RESULTS`, ``rows`` perturbed rows computed."""
        if result not in EXPLAIN_RESULTS:
            raise ValueError(f"unknown explanation result {result!r}")
        self.explanations.labels(model, method, result).inc()
        if rows:
            self.explanation_rows.labels(model, method).inc(rows)

    def set_rollout(self, model: str, state: str, weight: float) -> None:
        self.rollout_state.labels(model).set(STATE_CODES[state])
        self.rollout_weight.labels(model).set(weight)

    def observe_feedback(self, model: str, label: str | None, result: str) -> None:
        """Count one feedback request. ``label`` is ``None`` unless it is one of the model's labels, so
        clients cannot grow the label set; ``result`` is ``accepted`` or one of :data:`FEEDBACK_REASONS`."""
        if result != "accepted" and result not in FEEDBACK_REASONS:
            raise ValueError(f"unknown feedback result {result!r}")
        self.feedback.labels(model, "" if label is None else label, result).inc()

    def set_feedback_usage(self, model: str, items: int, stored_bytes: int) -> None:
        self.feedback_stored_items.labels(model).set(items)
        self.feedback_stored_bytes.labels(model).set(stored_bytes)

    def for_version(self, model: str, version: int) -> ModelMetrics:
        return ModelMetrics(self, model, str(version))


class ModelMetrics:
    """The children of every per-version metric, bound once at load (no label lookups per request).

    Also the batcher's observer (``on_batch``, ``on_dequeue``, ``on_queue_rows``, ``on_wait``). The queued
    rows are remembered and read by the gauge at scrape time, not written into it on every change. Every
    method is called on the event loop's thread (the children are lock-free: see the module docstring).
    """

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self._metrics = metrics
        self.model = model
        self.version = version
        labels = (model, version)
        self._requests = {("http", s): metrics.requests.labels(*labels, s, "http") for s in STATUSES}
        self._rows = metrics.rows.labels(*labels)
        self._batches = metrics.batches.labels(*labels)
        self._request_duration = {"http": metrics.request_duration.labels(*labels, "http")}
        self._queue_duration = metrics.queue_duration.labels(*labels)
        self._compute_duration = metrics.compute_duration.labels(*labels)
        self._batch_wait = metrics.batch_wait.labels(*labels)
        self._batch_size = metrics.batch_size.labels(*labels)
        self._queued_rows = 0
        metrics.queue_rows.labels(*labels).set_function(lambda: self._queued_rows)
        self._provider: str | None = None
        self.stats = VersionStats()

    def on_batch(self, rows: int, compute_seconds: float) -> None:
        self.stats.on_batch(rows, compute_seconds)
        self._rows.inc(rows)
        self._batches.inc()
        self._batch_size.observe(rows)
        self._compute_duration.observe(compute_seconds)

    def on_dequeue(self, queued_seconds: float) -> None:
        self.stats.queue.add(queued_seconds)
        self._queue_duration.observe(queued_seconds)

    def on_queue_rows(self, rows: int) -> None:
        self._queued_rows = rows

    def on_wait(self, seconds: float) -> None:
        self._batch_wait.observe(seconds)

    def observe_request(self, status: str, seconds: float, protocol: str = "http") -> None:
        """One answered inference request: ``status`` in STATUSES, ``protocol`` in PROTOCOLS."""
        (self.stats.success if status == "ok" else self.stats.fail).add(seconds)
        counter = self._requests.get((protocol, status))
        if counter is None:
            counter = self._requests[(protocol, status)] = self._metrics.requests.labels(
                self.model, self.version, status, protocol
            )
        counter.inc()
        duration = self._request_duration.get(protocol)
        if duration is None:
            duration = self._request_duration[protocol] = self._metrics.request_duration.labels(
                self.model, self.version, protocol
            )
        duration.observe(seconds)

    def set_served(self, provider: str) -> None:
        self._provider = provider
        self._metrics.model_info.labels(self.model, self.version, provider).set(1)

    def remove(self) -> None:
        """Forget the gauges of an unloaded version (counters stay, as Prometheus expects)."""
        wrappers: tuple[tuple[MetricWrapperBase, tuple[str, ...]], ...] = (
            (self._metrics.queue_rows, (self.model, self.version)),
        )
        if self._provider is not None:
            wrappers += ((self._metrics.model_info, (self.model, self.version, self._provider)),)
        for metric, labels in wrappers:
            with contextlib.suppress(KeyError):
                metric.remove(*labels)


class Duration:
    """A count and a total in nanoseconds: Triton's statistics unit."""

    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)

    def as_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class VersionStats:
    """Per-version statistics in the shape of Triton's statistics extension."""

    def __init__(self) -> None:
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute = Duration()
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.by_batch_size: defaultdict[int, Duration] = defaultdict(Duration)

    def on_batch(self, rows: int, compute_seconds: float) -> None:
        self.compute.add(compute_seconds)
        self.by_batch_size[rows].add(compute_seconds)
        self.inference_count += rows
        self.execution_count += 1
        self.last_inference_ms = int(time.time() * 1000)

    def as_json(self, name: str, version: str) -> dict[str, Any]:
        empty = Duration().as_json()
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_json(),
                "fail": self.fail.as_json(),
                "queue": self.queue.as_json(),
                "compute_input": empty,
                "compute_infer": self.compute.as_json(),
                "compute_output": empty,
                "cache_hit": empty,
                "cache_miss": empty,
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": empty,
                    "compute_infer": d.as_json(),
                    "compute_output": empty,
                }
                for size, d in sorted(self.by_batch_size.items())
            ],
        }

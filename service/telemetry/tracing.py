"""OpenTelemetry tracing: one trace per request, through the queue and the batch; off unless configured.

Tracing is on only when an OTLP endpoint is configured (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, and ``OTEL_SDK_DISABLED`` is not ``true``): :func:`from_env`
then builds a :class:`Tracing`, otherwise it returns None and no tracer, span or SDK module exists in
the process. Every component holds ``Tracing | None`` from start-up, so the request path pays one
``is None`` test when tracing is off (see ``docs/tracing.md``). The standard variables apply as the SDK
reads them: ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` (+ ``_ARG``),
``OTEL_EXPORTER_OTLP_*`` (headers, timeout, compression), ``OTEL_BSP_*`` (the export queue) and
``OTEL_PROPAGATORS``. Spans go out over OTLP/HTTP (protobuf) from a background thread; a full export
queue drops spans, never blocks a request.

What is traced (names and attributes: ``docs/tracing.md``):

- a request: the transport's server span (continuing an incoming W3C ``traceparent``), with ``decode``,
  ``queue`` (submitted until taken into a batch), ``batch`` (taken until answered, linked to the batch
  span) and ``encode`` children, and ``preprocess`` / ``feedback.store`` where those happen;
- a batch: one span per executed batch, in a trace of its own, linked to the span of every traced
  request it served, with a ``compute`` child (the onnxruntime run). A batch is traced whenever any
  request in it is, whatever the sampler says about a new trace;
- model lifecycle: ``model.load``, ``model.retire`` and ``model.unload`` spans, children of the admin
  request that asked for them, or traces of their own when the repository watcher acts (always sampled,
  like batches: they are rare). Rollout decisions will hook in the same way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

SCOPE = "digits-serving"
DEFAULT_SERVICE_NAME = "digits-serving"
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_SAMPLERS = frozenset(
    {
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    }
)


class TracingConfigError(ValueError):
    """An ``OTEL_*`` variable this service cannot honour (``python -m service`` exits 2)."""


def enabled_in(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` turns tracing on: an OTLP endpoint set and the SDK not disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in _ENDPOINTS)


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse what the SDK would silently replace by a default: an unknown sampler, a bad ratio, an
    exporter or protocol other than OTLP over HTTP with protobuf. Empty variables count as unset (as
    compose passes them through)."""
    sampler = (environ.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").strip().lower()
    if sampler not in _SAMPLERS:
        raise TracingConfigError(
            f"OTEL_TRACES_SAMPLER: unknown sampler {sampler!r}; one of {sorted(_SAMPLERS)}"
        )
    if sampler.endswith("traceidratio"):
        arg = environ.get("OTEL_TRACES_SAMPLER_ARG") or "1.0"
        try:
            ratio = float(arg)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise TracingConfigError(f"OTEL_TRACES_SAMPLER_ARG: expected a ratio from 0 to 1, got {arg!r}")
    exporter = (environ.get("OTEL_TRACES_EXPORTER") or "otlp").strip().lower()
    if exporter not in ("otlp", "none"):
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER: only 'otlp' (or 'none') is supported, got {exporter!r}"
        )
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = environ.get(name, "").strip().lower()
        if protocol and protocol != "http/protobuf":
            raise TracingConfigError(f"{name}: only 'http/protobuf' is supported, got {protocol!r}")
    for name in _ENDPOINTS:
        endpoint = environ.get(name, "").strip()
        if endpoint and not endpoint.startswith(("http://", "https://")):
            raise TracingConfigError(f"{name}: expected an http:// or https:// URL, got {endpoint[:64]!r}")


def from_env(environ: Mapping[str, str] | None = None) -> Tracing | None:
    """A :class:`Tracing` exporting over OTLP/HTTP when ``environ`` (default: the process's) configures
    an endpoint; None otherwise. :class:`TracingConfigError` for settings it cannot honour."""
    environ = os.environ if environ is None else environ
    check_environment(environ)
    if not enabled_in(environ):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return Tracing.create(OTLPSpanExporter())


class Tracing:
    """The tracers of one process: ``tracer`` samples as configured, ``always`` samples every new trace
    (batches and model lifecycle) and follows its parent otherwise. Both export through one processor."""

    def __init__(self, provider: TracerProvider, always: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(SCOPE)
        self.always = always.get_tracer(SCOPE)
        self._always_provider = always

    @classmethod
    def create(cls, exporter: SpanExporter, *, batch_export: bool = True) -> Tracing:
        """Tracers over ``exporter``: batched in a background thread (``OTEL_BSP_*``), or, for tests
        with an in-memory exporter, exported as each span ends."""
        from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

        from service import __version__

        resource = Resource.create({SERVICE_VERSION: __version__})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
        processor = BatchSpanProcessor(exporter) if batch_export else SimpleSpanProcessor(exporter)
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)  # sampler: OTEL_TRACES_SAMPLER
        always = TracerProvider(sampler=ParentBased(ALWAYS_ON), resource=resource, shutdown_on_exit=False)
        provider.add_span_processor(processor)
        always.add_span_processor(processor)
        return cls(provider, always)

    def shutdown(self) -> None:
        """Export what is buffered (bounded by ``OTEL_BSP_EXPORT_TIMEOUT``) and stop the export thread."""
        self.provider.shutdown()

    # ---- requests --------------------------------------------------------------------------------

    @staticmethod
    def extract(carrier: Mapping[str, str]) -> otel_context.Context:
        """The caller's context from W3C ``traceparent``/``tracestate`` (``OTEL_PROPAGATORS``)."""
        return propagate.extract(carrier)

    def server_span(self, name: str, carrier: Mapping[str, str], attributes: dict[str, Any]) -> Span:
        """A SERVER span continuing the caller's trace (not yet current). When it is not recording (not
        sampled) the transport goes on without it, so an unsampled request costs one sampling decision;
        otherwise the transport makes it current with :func:`current`."""
        context = self.extract(carrier) if carrier else None
        return self.tracer.start_span(name, context=context, kind=SpanKind.SERVER, attributes=attributes)

    @contextmanager
    def child(self, name: str, attributes: dict[str, Any] | None = None) -> Iterator[Span]:
        """An INTERNAL span under the current one, current while the block runs; an exception sets its
        status to the error's client message."""
        with _current(self.tracer, name, attributes, record_exception=False) as span:
            yield span

    def request(self, attributes: dict[str, Any]) -> RequestTrace | None:
        """The current request's span with ``attributes`` added, when it is sampled; None otherwise."""
        span = trace.get_current_span()
        if not span.is_recording():
            return None
        span.set_attributes(attributes)
        return RequestTrace(self, span)

    # ---- batches and lifecycle ---------------------------------------------------------------------

    def batches(self, model: str, version: int, provider: str, max_batch_size: int) -> BatchTracer:
        """The batch tracer of one model version's batcher (see :class:`BatchTracer`)."""
        return BatchTracer(self, model, version, provider, max_batch_size)

    @contextmanager
    def lifecycle(self, name: str, attributes: dict[str, Any]) -> Iterator[Span]:
        """A model lifecycle span (``model.load``, ``model.retire``, ``model.unload``): under the current
        request if there is one, otherwise a trace of its own, always sampled."""
        with _current(self.always, name, attributes, record_exception=True) as span:
            yield span


@contextmanager
def _current(
    tracer: Any, name: str, attributes: dict[str, Any] | None, *, record_exception: bool
) -> Iterator[Span]:
    """A span of ``tracer``, current while the block runs; an exception sets its status to the error's
    client message (:func:`set_error`), never to OpenTelemetry's own description."""
    with tracer.start_as_current_span(
        name, attributes=attributes, record_exception=record_exception, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except BaseException as exc:
            set_error(span, exc)
            raise


class RequestTrace:
    """A sampled request's span, for the core and the transports to annotate and add children to."""

    __slots__ = ("span", "tracing")

    def __init__(self, tracing: Tracing, span: Span) -> None:
        self.tracing = tracing
        self.span = span

    def child(self, name: str, attributes: dict[str, Any] | None = None) -> Any:
        return self.tracing.child(name, attributes)


class JobTrace:
    """What a traced job carries through the batcher: its request's span and its open ``queue`` span."""

    __slots__ = ("batch", "queue", "request")

    def __init__(self, request: Span, queue: Span) -> None:
        self.request = request
        self.queue = queue
        self.batch: Span | None = None


class BatchTracer:
    """Spans of one batcher (:class:`service.core.batching.Batcher` calls it only when tracing is on).

    :meth:`submitted` runs in the submitting request's context and opens its ``queue`` span (None when
    the request is not sampled); :meth:`started` closes the queue spans of the jobs taken, opens the
    batch span (linked to each traced request) and each request's ``batch`` span (linked to the batch);
    :meth:`finished` closes them with the compute time; :meth:`dropped` closes a queue span whose job
    left the queue without being computed.
    """

    def __init__(
        self, tracing: Tracing, model: str, version: int, provider: str, max_batch_size: int
    ) -> None:
        self._tracer = tracing.tracer
        self._always = tracing.always
        self._attributes: dict[str, str | int] = {
            "inference.model.name": model,
            "inference.model.version": version,
            "inference.batch.max_rows": max_batch_size,
        }
        self._name = f"batch {model}/{version}"
        self._provider = provider

    def submitted(self, rows: int) -> JobTrace | None:
        request = trace.get_current_span()
        if not request.is_recording():
            return None
        return JobTrace(request, self._tracer.start_span("queue", attributes={"inference.rows": rows}))

    def started(self, traces: Sequence[JobTrace | None], rows: int, held_s: float) -> Span | None:
        traced = [t for t in traces if t is not None]
        if not traced:
            return None
        batch = self._always.start_span(
            self._name,
            context=otel_context.Context(),  # a trace of its own, whatever is current
            links=[Link(t.request.get_span_context()) for t in traced],
            attributes={
                **self._attributes,
                "inference.batch.rows": rows,
                "inference.batch.requests": len(traces),
                "inference.batch.traced_requests": len(traced),
                "inference.batch.hold_s": held_s,
                "inference.provider": self._provider,
            },
        )
        link = [Link(batch.get_span_context())]
        for t in traced:
            t.queue.end()
            t.batch = self._tracer.start_span(
                "batch",
                context=trace.set_span_in_context(t.request),
                links=link,
                attributes={"inference.batch.rows": rows, "inference.batch.requests": len(traces)},
            )
        return batch

    def finished(
        self, batch: Span, traces: Sequence[JobTrace | None], compute_s: float, error: str | None
    ) -> None:
        end = time.time_ns()
        compute = self._always.start_span(
            "compute",
            context=trace.set_span_in_context(batch),
            start_time=end - int(compute_s * 1e9),
            attributes={"inference.provider": self._provider},
        )
        for span in (compute, batch):
            span.set_attribute("inference.compute_s", compute_s)
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error))
        compute.end(end)
        batch.end(end)
        for t in traces:
            if t is not None and t.batch is not None:
                t.batch.set_attribute("inference.compute_s", compute_s)
                if error is not None:
                    t.batch.set_status(Status(StatusCode.ERROR, error))
                t.batch.end(end)

    @staticmethod
    def dropped(job: JobTrace, error: BaseException | None) -> None:
        if job.queue.is_recording():
            if error is None:
                job.queue.set_attribute("inference.cancelled", True)
            else:
                set_error(job.queue, error)
            job.queue.end()


def current(span: Span) -> Any:
    """Make ``span`` current for the block and end it after; exceptions are recorded on it (their
    status is the transport's to set, from what it answered)."""
    return trace.use_span(span, end_on_exit=True, record_exception=True, set_status_on_exception=False)


def error_status(message: str) -> Status:
    """The status of a span whose request was answered with the error ``message``."""
    return Status(StatusCode.ERROR, message)


def set_error(span: Span, exc: BaseException) -> None:
    """Mark ``span`` failed with the message the client is answered with (never internals)."""
    from service.errors import ServiceError

    if isinstance(exc, ServiceError):
        span.set_status(Status(StatusCode.ERROR, exc.message))
        span.set_attribute("error.type", exc.kind.value)
    elif isinstance(exc, Exception):
        span.set_status(Status(StatusCode.ERROR, "internal server error"))
        span.set_attribute("error.type", type(exc).__qualname__)

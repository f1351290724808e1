"""service.telemetry.logs: JSON lines with request and trace ids, and the request id a client may give."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.telemetry.logs import JsonFormatter, pick_request_id, request_id
from service.telemetry.tracing import Tracing
from tests.helpers.data import ROOT


def record(message: str, exc_info: bool = False) -> logging.LogRecord:
    info = None
    if exc_info:
        try:
            raise ValueError("broken")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("service.x", logging.WARNING, __file__, 1, message, ("arg",), info)


def test_a_line_outside_requests_has_no_ids() -> None:
    line = json.loads(JsonFormatter().format(record("hello %s")))
    assert line["message"] == "hello arg"
    assert line["level"] == "warning" and line["logger"] == "service.x"
    assert line["time"].endswith("+00:00")
    assert "request_id" not in line and "trace_id" not in line


def test_a_line_inside_a_traced_request_carries_its_ids() -> None:
    tracing = Tracing.create(InMemorySpanExporter(), batch_export=False)
    token = request_id.set("req-7")
    try:
        with tracing.tracer.start_as_current_span("request") as span:
            line = json.loads(JsonFormatter().format(record("inside %s", exc_info=True)))
    finally:
        request_id.reset(token)
    context = span.get_span_context()
    assert line["request_id"] == "req-7"
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
    assert "ValueError: broken" in line["exception"]


@pytest.mark.parametrize(
    ("given", "kept"),
    [("abc-123", True), ("x" * 128, True), ("x" * 129, False), ("", False), ("a b", False), ("é", False)],
)
def test_a_clients_request_id_is_kept_only_when_printable_and_short(given: str, kept: bool) -> None:
    chosen = pick_request_id(given)
    assert (chosen == given) is kept
    if not kept:
        assert len(chosen) == 16 and int(chosen, 16) >= 0


def test_the_process_logs_json_lines_when_asked() -> None:
    script = "from service.telemetry import logs; import logging; logs.configure('info', 'json'); "
    script += "logging.getLogger('x').info('hi')"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert json.loads(result.stderr)["message"] == "hi"
    text = script.replace("'json'", "'text'")
    result = subprocess.run(
        [sys.executable, "-c", text], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stderr.rstrip().endswith("INFO x: hi")

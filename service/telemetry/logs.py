"""Process logging: plain text (the default) or one JSON object per line, with request and trace ids.

``SERVE_LOG_FORMAT=json`` makes every log line of the process (the service's and uvicorn's) a JSON
object: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, ``exception`` (the traceback, when
there is one), and, for a line written while a request is being answered, ``request_id`` and, when
tracing is on and the request is sampled, ``trace_id`` and ``span_id`` (lower-case hex, as W3C
``traceparent`` and every trace backend write them), so that a log line finds its trace and back.

The request id is the client's ``X-Request-ID`` (HTTP header or gRPC metadata; printable ASCII, at most
:data:`MAX_REQUEST_ID` characters) or one made up, and is answered back in the same header. It lives in
a context variable that the transports set only while JSON logs or tracing are on
(:mod:`service.http.tracing`, :mod:`service.grpc.tracing`). There are no access logs: one line per request
would put a write on the request path; the trace is the per-request record.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson
from opentelemetry import trace

#: The id of the request being answered in this context (None outside requests, or with both off).
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
MAX_REQUEST_ID = 128
_VALID_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID}}}")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def pick_request_id(given: str | None) -> str:
    """The client's id when it is printable ASCII of acceptable length, otherwise a new random one."""
    if given is not None and _VALID_ID.fullmatch(given):
        return given
    return os.urandom(8).hex()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the request id and the current span's trace and span ids."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return orjson.dumps(entry).decode()


def configure(level: str, log_format: str) -> None:
    """Send the process's logs to stderr, as text or JSON (``SERVE_LOG_LEVEL``, ``SERVE_LOG_FORMAT``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())

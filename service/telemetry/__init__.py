"""What the service says about itself: ``metrics.py`` (Prometheus), ``tracing.py`` (OpenTelemetry, only
when an endpoint is configured) and ``logs.py`` (text or JSON lines, the request id)."""

"""What tracing costs: the service with tracing off against another tree (main), and with tracing on.

``python -m bench.tracing --baseline-tree DIR`` serves the same model from this tree with tracing off,
from ``DIR`` (e.g. ``git archive main`` unpacked; its own defaults), and from this tree exporting over
OTLP/HTTP to a receiver in this process (which decodes nothing and answers 200) at a 1 % sampler
(``parentbased_traceidratio``, 0.01) and at 100 % (``always_on``). Each configuration is a fresh process
driven by ``hey`` with single-image JSON requests at ``--concurrency`` for ``--seconds``, interleaved over
``--rounds``; it prints the median req/s and the minimum server CPU per request of each, and each as a
ratio of this tree with tracing off. CPU per request moves least when other work shares the cores.

``--in-process`` measures the same without HTTP servers or ``hey``: the app of this tree is driven in one
process through ASGI (the real model, the real batcher, 64 concurrent callers), once per mode (off; JSON
logs only; tracing on with a sampler that samples nothing; 1 %; 100 %, spans handed to an exporter that
drops them), each in a fresh process, interleaved over ``--rounds``; it prints the minimum CPU microseconds
per request of each mode (the process's CPU, the compute threads and the span export thread included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.harness import RESULTS, ROOT, first_test_image, hey, write_bodies
from bench.processes import service

#: In-process modes: SERVE_LOG_FORMAT, and the sampler (None: tracing off).
MODES: dict[str, tuple[str, tuple[str, str] | None]] = {
    "off": ("text", None),
    "json logs": ("json", None),
    "sampled 0 %": ("text", ("parentbased_traceidratio", "0")),
    "sampled 1 %": ("text", ("parentbased_traceidratio", "0.01")),
    "sampled 100 %": ("text", ("always_on", "1")),
}


def child(mode: str, model: str, requests: int, concurrency: int) -> float:
    """In this process: CPU microseconds per request of the app answering ``requests`` infer requests."""
    import asyncio
    import os
    import time

    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from service.app import create_app
    from service.settings import Settings
    from service.telemetry.tracing import Tracing

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    log_format, sampler = MODES[mode]
    tracing = None
    if sampler is not None:
        os.environ["OTEL_TRACES_SAMPLER"], os.environ["OTEL_TRACES_SAMPLER_ARG"] = sampler
        tracing = Tracing.create(Drop())
    settings = Settings(model_repository=ROOT / "models", models=[model], log_format=log_format)  # type: ignore[arg-type]
    app = create_app(settings, tracing=tracing)
    body = write_bodies(first_test_image(), Path(tempfile.mkdtemp()))["json"][0].read_bytes()
    path = f"/v2/models/{model}/infer"
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST"}
    scope |= {"scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": ""}
    scope |= {"headers": [(b"content-length", str(len(body)).encode())], "client": ("127.0.0.1", 1)}
    statuses: set[int] = set()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    async def caller(count: int) -> None:
        for _ in range(count):
            await app(dict(scope), receive, send)

    async def run() -> float:
        async with app.router.lifespan_context(app):
            await asyncio.gather(*(caller(20) for _ in range(concurrency)))  # warm-up
            started = time.process_time()
            await asyncio.gather(*(caller(requests // concurrency) for _ in range(concurrency)))
            return (time.process_time() - started) / (requests // concurrency * concurrency) * 1e6

    used = asyncio.run(run())
    if statuses != {200}:
        raise RuntimeError(f"unexpected statuses {statuses}")
    return used


def in_process(args: argparse.Namespace) -> int:
    import subprocess

    runs: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for mode in MODES:
            cmd = [sys.executable, "-m", "bench.tracing", "--child", mode, "--model", args.model]
            cmd += ["--requests", str(args.requests), "--concurrency", str(args.concurrency)]
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
            runs.setdefault(mode, []).append(float(out.strip().splitlines()[-1]))
    base = min(runs["off"])
    print(
        f"CPU us per request in process, c={args.concurrency}, minimum of {args.rounds} rounds [all rounds]:"
    )
    for mode, values in runs.items():
        spread = ", ".join(f"{v:.0f}" for v in values)
        low = min(values)
        print(f"  {mode:14} {low:6.1f}  {low - base:+6.1f}  ({low / base:.3f}x)  [{spread}]")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tracing-in-process.json").write_text(json.dumps(runs, indent=2))
    return 0


@contextmanager
def otlp_sink() -> Iterator[tuple[int, list[int]]]:
    """An OTLP/HTTP endpoint that reads and drops every export; yields its port and the bytes received."""
    received = [0]

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received[0] += len(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-tree", type=Path, help="another source tree to serve, tracing off")
    parser.add_argument("--model", default="mnist-mlp")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-process", action="store_true", help="CPU per request of the app in process")
    parser.add_argument("--requests", type=int, default=6400, help="requests per in-process run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(child(args.child, args.model, args.requests, args.concurrency))
        return 0
    if args.in_process:
        return in_process(args)
    work = Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    body, headers = write_bodies(first_test_image(), work)["json"]
    results: dict[str, list[dict[str, float]]] = {}
    with otlp_sink() as (sink_port, received):
        endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}"}
        configs: dict[str, tuple[Path, dict[str, str]]] = {"this tree, off": (ROOT, {})}
        if args.baseline_tree is not None:
            configs["baseline tree, off"] = (args.baseline_tree.resolve(), {})
        configs["this tree, 1 %"] = (
            ROOT,
            {
                **endpoint,
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.01",
            },
        )
        configs["this tree, 100 %"] = (ROOT, {**endpoint, "OTEL_TRACES_SAMPLER": "always_on"})
        for _ in range(args.rounds):
            for name, (tree, env) in configs.items():
                full_env = {
                    "SERVE_MODEL_REPOSITORY": str(ROOT / "models"),
                    "SERVE_MODELS": args.model,
                    "OTEL_EXPORTER_OTLP_ENDPOINT": "",
                    **env,
                }
                log = work / f"{len(results)}-{sum(map(len, results.values()))}.log"
                with service(full_env, log, cwd=tree, grpc=False) as proc:
                    url = f"{proc.url}/v2/models/{args.model}/infer"
                    hey(url, body, headers, args.concurrency, 2, proc.pid)  # warm-up
                    r = hey(url, body, headers, args.concurrency, args.seconds, proc.pid)
                results.setdefault(name, []).append(r)
                print(
                    f"{name:20} {r['rps']:8.0f} req/s  cpu/req {r['server_cpu_us']:5.0f} us  "
                    f"p99 {r['p99_ms']:6.1f} ms  non-2xx {r['non_2xx']:.0f}",
                    flush=True,
                )
        exported = received[0]
    base = results["this tree, off"]
    base_rps = statistics.median(r["rps"] for r in base)
    base_cpu = min(r["server_cpu_us"] for r in base)
    summary = {}
    print(f"\nmedian of {args.rounds} rounds, c={args.concurrency}, {args.seconds:.0f} s each:")
    for name, rs in results.items():
        rps = statistics.median(r["rps"] for r in rs)
        cpu = min(r["server_cpu_us"] for r in rs)
        summary[name] = {"rps": rps, "cpu_us": cpu, "rps_ratio": rps / base_rps, "cpu_ratio": cpu / base_cpu}
        ratios = f"({rps / base_rps:.3f}x)  cpu/req {cpu:5.0f} us ({cpu / base_cpu:.3f}x)"
        print(f"{name:20} {rps:8.0f} req/s {ratios}")
    print(f"OTLP bytes received: {exported}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tracing.json").write_text(json.dumps({"summary": summary, "rounds": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
